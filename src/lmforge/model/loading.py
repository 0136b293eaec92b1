"""Loading a model directory and its tokenizer for evaluation, lineage checked.

A model directory (`step_N/`, `final/`) holds a Hugging Face causal LM and a
manifest recording the `tokenizer_sha256` it was trained with. `load_for_eval`
checks that hash against the tokenizer directory the user names, then loads the
model on the chosen device (GPU when present) in the chosen precision (bf16 on a
GPU that supports it, float32 on CPU).

Text is encoded with the Hugging Face tokenizer of the tokenizer directory, the one
lm-evaluation-harness would load, so our numbers and the harness's agree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lmforge.artifacts import check_tokenizer_lineage, load_manifest, read_json
from lmforge.errors import ArtifactError, ConfigError
from lmforge.evaluation.loglikelihood import check_scorable
from lmforge.log import get_logger
from lmforge.tokenizer.format import SPECIAL_TOKENS
from lmforge.tokenizer.spm import load_tokenizer_artifact

log = get_logger(__name__)

MODEL_STAGES = ("pretrain", "sft")
DEFAULT_MAX_LENGTH = 2048  # the harness's fallback when neither config nor tokenizer says
_TOKENIZER_UNSET = 10 ** 29  # HF's "no model_max_length" sentinel is ~1e30


def resolve_device(name: str = "auto") -> str:
    """'auto' -> cuda when available, else cpu; other names are checked."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but no CUDA GPU is available")
    return name


def resolve_dtype(name: str, device: str):
    """'auto' -> bfloat16 on a GPU that supports it, float32 otherwise."""
    import torch

    if name == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise ConfigError(f"dtype must be auto or one of {', '.join(table)}, got {name!r}")
    return table[name]


@dataclass
class TextEncoder:
    """A Hugging Face tokenizer seen through lmforge's ids (what metrics and chatml need)."""

    hf: object  # transformers PreTrainedTokenizerBase
    bos_id: int | None
    eos_id: int
    pad_id: int
    im_start_id: int
    im_end_id: int

    def encode(self, text: str) -> list[int]:
        """Ids of the text, no special tokens added."""
        # verbose=False: long articles exceed model_max_length on purpose (they are windowed).
        return list(self.hf.encode(text, add_special_tokens=False, verbose=False))

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)

    @property
    def prefix_id(self) -> int:
        """Token that precedes a document's first window: BOS if defined, else EOS (harness rule)."""
        return self.bos_id if self.bos_id is not None else self.eos_id


def load_text_encoder(tokenizer_dir: str | os.PathLike) -> TextEncoder:
    """AutoTokenizer of a tokenizer directory, checked against lmforge's fixed special ids."""
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(str(tokenizer_dir), trust_remote_code=False)
    except Exception as exc:  # missing or unreadable HF files are a user-fixable artifact problem
        raise ArtifactError(f"{tokenizer_dir}: cannot load the Hugging Face tokenizer "
                            f"({type(exc).__name__}: {exc}); rebuild it with `lmforge tokenizer`") from None
    ids = {name: hf.convert_tokens_to_ids(piece) for name, (piece, _) in SPECIAL_TOKENS.items()}
    wrong = {n: i for n, i in ids.items() if i != SPECIAL_TOKENS[n][1]}
    if wrong:
        raise ArtifactError(f"{tokenizer_dir}: Hugging Face tokenizer has special ids {wrong}, "
                            f"lmforge expects {({n: SPECIAL_TOKENS[n][1] for n in wrong})}")
    if hf.encode("a") != hf.encode("a", add_special_tokens=False):
        log.warning("%s: the tokenizer adds special tokens on encode; lm-evaluation-harness would score "
                    "an extra BOS, lmforge does not, so the two will differ", tokenizer_dir)
    return TextEncoder(hf=hf, bos_id=hf.bos_token_id, eos_id=ids["eos"], pad_id=ids["pad"],
                       im_start_id=ids["im_start"], im_end_id=ids["im_end"])


def context_length(model_config, hf_tokenizer=None) -> int:
    """Context length as the harness resolves it: model config, then tokenizer, then 2048."""
    config = getattr(model_config, "text_config", None) or model_config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    limit = getattr(hf_tokenizer, "model_max_length", None)
    if limit is not None and limit < _TOKENIZER_UNSET:
        return int(limit)
    return DEFAULT_MAX_LENGTH


@dataclass
class EvalModel:
    model: object  # transformers PreTrainedModel, in eval mode
    encoder: TextEncoder
    tokenizer_sha256: str
    manifest: dict
    device: str
    dtype: str
    max_length: int


def check_lineage(model_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike,
                  stages: tuple[str, ...] = MODEL_STAGES) -> tuple[dict, str]:
    """The model's manifest and the tokenizer's sha256, after checking they agree."""
    manifest = load_manifest(model_dir, stages)
    tokenizer = load_tokenizer_artifact(tokenizer_dir)  # manifest required; spm.model sha256 checked
    check_tokenizer_lineage(tokenizer.sha256, f"tokenizer {tokenizer_dir}",
                            manifest.get("tokenizer_sha256"), f"model {model_dir} (manifest.json)")
    return manifest, tokenizer.sha256


SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.bin")


def check_model_dir(model_dir: str | os.PathLike) -> dict:
    """Refuse a model directory that would need code or pickles to load; return its config.json.

    lmforge never executes code shipped with a model (`auto_map`, custom
    `model_type`) and never unpickles weights: only architectures transformers
    itself implements, with safetensors weights.
    """
    from transformers import CONFIG_MAPPING

    root = Path(model_dir)
    if not (root / "config.json").is_file():
        raise ArtifactError(f"{root} is not a model directory (no config.json)")
    config = read_json(root / "config.json", "model config")
    if not isinstance(config, dict):
        raise ArtifactError(f"{root / 'config.json'} is not a JSON object")
    if config.get("auto_map"):
        raise ArtifactError(f"{root}: config.json asks to run custom code (auto_map); lmforge never executes "
                            "code from a model folder")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise ArtifactError(f"{root}: unknown architecture model_type={model_type!r}; lmforge loads only "
                            "architectures built into transformers, never custom code")
    if not any((root / name).is_file() for name in SAFE_WEIGHTS):
        pickles = [name for name in PICKLE_WEIGHTS if (root / name).is_file()]
        what = f"only pickle weights ({', '.join(pickles)})" if pickles else "no model.safetensors"
        raise ArtifactError(f"{root} has {what}; lmforge loads safetensors only (pickles can run code)")
    return config


def load_causal_lm(model_dir: str | os.PathLike, dtype=None):
    """`AutoModelForCausalLM` from a checked model directory: no remote code, safetensors only.

    The one way lmforge loads a model (eval, chat, SFT base). Any failure to read
    the files (truncated weights, a broken safetensors header) is one ArtifactError.
    """
    from transformers import AutoModelForCausalLM

    check_model_dir(model_dir)
    kwargs = {} if dtype is None else {"dtype": dtype}
    try:
        return AutoModelForCausalLM.from_pretrained(str(model_dir), trust_remote_code=False, use_safetensors=True,
                                                    **kwargs)
    except Exception as exc:  # noqa: BLE001 - safetensors, OSError, ValueError...: all mean unreadable files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ArtifactError(f"{model_dir}: cannot load the model ({type(exc).__name__}: {first[:300]}); "
                            "the files are damaged or not an lmforge/transformers model") from None


def load_for_eval(model_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike, *, device: str = "auto",
                  dtype: str = "auto", max_length: int | None = None,
                  stages: tuple[str, ...] = MODEL_STAGES) -> EvalModel:
    """Check lineage, then load model (safetensors only) and tokenizer for scoring."""
    manifest, digest = check_lineage(model_dir, tokenizer_dir, stages)
    encoder = load_text_encoder(tokenizer_dir)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    model = load_causal_lm(model_dir, torch_dtype)
    model.to(device).eval()
    try:
        check_scorable(model)
    except ValueError as exc:
        raise ArtifactError(f"{model_dir}: {exc}") from None
    if len(encoder.hf) > model.config.vocab_size:
        raise ArtifactError(f"tokenizer {tokenizer_dir} has {len(encoder.hf)} tokens but model {model_dir} "
                            f"only {model.config.vocab_size} embeddings")
    length = max_length or context_length(model.config, encoder.hf)
    log.info("model %s: %s parameters on %s (%s), context %d tokens",
             Path(model_dir), f"{sum(p.numel() for p in model.parameters()):,}", device,
             str(torch_dtype).replace("torch.", ""), length)
    return EvalModel(model=model, encoder=encoder, tokenizer_sha256=digest, manifest=manifest, device=device,
                     dtype=str(torch_dtype).replace("torch.", ""), max_length=length)
