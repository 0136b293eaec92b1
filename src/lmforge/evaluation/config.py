"""The settings of the two evaluation stages, `lmforge eval` (config/evaluation/pretrain_standard.json)
and `lmforge eval-sft` (config/evaluation/sft_standard.json), and the plan's reference ranges.

They live here, not in the stages, because the SFT evaluation extends the pretraining one and the
model card prints the reference ranges: both read them without importing a stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lmforge.config import spec
from lmforge.evaluation.smoke import SmokeCase, SmokeRules
from lmforge.evaluation.zeroshot import ZeroShotSettings


@dataclass
class WikitextSettings:
    enabled: bool = spec(True, help="compute WikiText-2 perplexity")
    hub_id: str = spec("EleutherAI/wikitext_document_level", help="hub dataset (redirected by LMFORGE_MIRROR)")
    hub_config: str = spec("wikitext-2-raw-v1", help="hub dataset config")
    split: str = spec("test", help="hub split")
    field: str = spec("page", help="record field holding one article")
    local_file: str | None = spec(None, help="raw WikiText file of lines, or JSON lines with `page` (instead of the hub)")
    max_docs: int | None = spec(None, min=1, help="cap on articles (result marked partial)")


@dataclass
class BoolQSettings:
    enabled: bool = spec(True, help="compute BoolQ accuracy")
    hub_id: str = spec("aps/super_glue", help="hub dataset (redirected by LMFORGE_MIRROR)")
    hub_config: str = spec("boolq", help="hub dataset config")
    split: str = spec("validation", help="hub split")
    local_file: str | None = spec(None, help="JSON lines, SuperGLUE or original BoolQ schema (instead of the hub)")
    max_examples: int | None = spec(None, min=1, help="cap on questions (result marked partial)")
    prompt_format: str = spec("harness", choices=("harness", "chatml"), help="harness = lm-eval's prompt")


@dataclass
class GenerationConfig:
    enabled: bool = spec(True, help="write generations.jsonl")
    prompts: list[str] = spec(default_factory=list, help="prompts, each generated alone")
    add_bos: bool = spec(True, help="start each prompt with <s>, as every training document starts")
    max_new_tokens: int = spec(64, min=1, max=4096)
    greedy: bool = spec(True, help="one greedy continuation per prompt")
    samples: int = spec(1, min=0, max=100, help="sampled continuations per prompt")
    temperature: float = spec(0.8, min=1e-4, max=10.0)
    top_k: int = spec(50, min=0)
    top_p: float = spec(0.95, min=0.0, max=1.0)
    seed: int = spec(1234, min=0, help="sample k of every prompt uses seed + k")


@dataclass
class RuntimeSettings:
    batch_size: int = spec(8, min=1, max=4096, help="sequences per forward pass")
    max_length: int | None = spec(None, min=2, help="context length for scoring (WikiText windows, BoolQ "
                                  "truncation); null = the model's max_position_embeddings, as the harness")
    device: str = spec("auto", help="auto (GPU if present), cpu, cuda, cuda:N")
    dtype: str = spec("auto", choices=("auto", "float32", "bfloat16", "float16"), help="auto = bf16 on GPU, fp32 on CPU")


@dataclass
class ExpectedRanges:
    """The plan's reference ranges, printed beside the obtained values (never enforced)."""

    wikitext_word_perplexity: list[float] = spec(default_factory=lambda: [45.0, 70.0])
    boolq_accuracy: list[float] = spec(default_factory=lambda: [0.58, 0.68])

    def check(self) -> list[str]:
        return [f"{name}: expected [low, high] with low <= high, got {value}"
                for name, value in self.__dict__.items() if len(value) != 2 or value[0] > value[1]]


@dataclass
class EvalConfig:
    """Settings of `lmforge eval` (config/evaluation/pretrain_standard.json)."""

    wikitext: WikitextSettings = field(default_factory=WikitextSettings)
    boolq: BoolQSettings = field(default_factory=BoolQSettings)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    expected: ExpectedRanges = field(default_factory=ExpectedRanges)
    zero_shot: ZeroShotSettings = field(default_factory=ZeroShotSettings)


def json_safe(obj):
    """Infinite perplexities (random models) as the string "inf": JSON has no infinity."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj


@dataclass
class PerplexitySettings:
    enabled: bool = spec(True, help="compute perplexity on the SFT val splits")
    data_dirs: list[str] | None = spec(None, help="SFT data dirs; null = those recorded in the model's manifest")
    max_examples: int | None = spec(None, min=1, help="cap on val conversations per data dir (partial)")


@dataclass
class BoolQSFTSettings(BoolQSettings):
    chatml_variant: bool = spec(True, help="also ask the questions as a ChatML user turn")


@dataclass
class SmokeSettings:
    enabled: bool = spec(True)
    max_new_tokens: int = spec(96, min=1, max=4096)
    temperature: float = spec(0.0, min=0.0, max=10.0, help="0 = greedy (reproducible)")
    repetition_penalty: float = spec(1.1, min=1.0, max=5.0)
    system_message: str | None = spec(None, help="system message for every case without its own")
    rules: SmokeRules = spec(default_factory=SmokeRules)
    cases: list[SmokeCase] = spec(default_factory=list)


@dataclass
class SFTExpected:
    """The plan's reference ranges, printed beside the obtained values (never enforced)."""

    sft_perplexity: list[float] = spec(default_factory=lambda: [35.0, 50.0])
    boolq_accuracy: list[float] = spec(default_factory=lambda: [0.68, 0.75])
    smoke_quality: list[float] = spec(default_factory=lambda: [0.65, 0.80])


@dataclass
class EvalSFTConfig:
    sft_perplexity: PerplexitySettings = field(default_factory=PerplexitySettings)
    boolq: BoolQSFTSettings = field(default_factory=BoolQSFTSettings)
    smoke: SmokeSettings = field(default_factory=SmokeSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    pretrain_results: str | None = spec(None, help="pretraining results.json (or its directory) for the BoolQ delta")
    expected: SFTExpected = field(default_factory=SFTExpected)
    zero_shot: ZeroShotSettings = field(default_factory=ZeroShotSettings)
