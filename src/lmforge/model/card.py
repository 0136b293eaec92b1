"""Model cards (README.md) for every model directory lmforge exports.

A card is rendered from what the artifacts already record, never typed by hand:
config.json (shape), the safetensors headers (parameter count), manifest.json (stage,
figures, inputs, tokenizer sha256), the input artifacts' manifests (training data and
their token counts) and, once `lmforge eval` / `eval-sft` have run, evaluation.json
(written here, beside the card). Each card opens with Hugging Face hub metadata
(license, library_name, base_model, datasets, tags) and shows the plan's reference
figures beside ours, the limits, and a load-and-chat snippet.

The card and evaluation.json are written *after* the model's manifest and are not
listed in it: they describe the artifact and change when it is evaluated, while the
manifest's hashes cover what the model is. Cards are rewritten whole each time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lmforge.artifacts import MANIFEST_NAME, atomic_write_json, atomic_write_text, read_json
from lmforge.config import to_dict
from lmforge.evaluation.config import ExpectedRanges, SFTExpected
from lmforge.log import get_logger
from lmforge.model.adapter import ADAPTER_CONFIG, BASE_FILE, is_adapter_dir

log = get_logger(__name__)

CARD_FILE = "README.md"
EVAL_FILE = "evaluation.json"
# The plan's "Métriques de Référence" (tiny model, 23M parameters, 600M tokens), for scale.
PLAN_LOSS = {"pretrain": (2.8, 3.2), "sft": (1.5, 2.0)}


# ---------------------------------------------------------------- facts gathered from artifacts

def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def count_parameters(model_dir: Path, pattern: str = "*.safetensors") -> int:
    """Parameters stored in a directory's safetensors files (tied weights are stored once)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(model_dir.glob(pattern)):
        with safe_open(str(path), framework="numpy") as f:
            for name in f.keys():
                n = 1
                for d in f.get_slice(name).get_shape():
                    n *= int(d)
                total += n
    return total


def _input_manifest(entry) -> dict:
    path = entry.get("path") if isinstance(entry, dict) else entry
    return _read(Path(path) / MANIFEST_NAME) if path else {}


def training_data(manifest: dict) -> list[dict]:
    """One row per training-data input: name, dataset ids, token counts."""
    rows = []
    for role, entry in sorted(manifest.get("inputs", {}).items()):
        if not (role.startswith("data") or role.startswith("sft_data")):
            continue
        m = _input_manifest(entry)
        figures, config = m.get("figures", {}), m.get("config", {})
        row = {"role": role, "path": (entry or {}).get("path", ""), "stage": m.get("stage", "?")}
        if m.get("stage") == "pack":
            corpus = _input_manifest(m.get("inputs", {}).get("corpus"))
            sources = (corpus.get("config", {}).get("corpus", {}) or {}).get("sources") or []
            row.update(tokens=figures.get("tokens", {}), sequences=figures.get("sequences", {}),
                       seq_length=figures.get("seq_length"), per_source=figures.get("tokens_per_source", {}),
                       datasets=[s.get("dataset") or s.get("name") for s in sources if isinstance(s, dict)])
        elif m.get("stage") == "sft-data":
            hub = (config.get("source") or {}).get("hub_id")
            row.update(name=m.get("name") or config.get("name"), tokens=figures.get("tokens", {}),
                       examples=figures.get("examples", {}), assistant_tokens=figures.get("assistant_tokens", {}),
                       datasets=[hub] if hub else [])
        rows.append(row)
    return rows


def _base_model(manifest: dict) -> str | None:
    entry = manifest.get("inputs", {}).get("base_model") or manifest.get("inputs", {}).get("init_from")
    if not entry:
        return None
    return str(entry.get("path") if isinstance(entry, dict) else entry)


# ---------------------------------------------------------------- rendering

def _front_matter(meta: dict) -> str:
    lines = ["---"]
    for key, value in meta.items():
        if value is None or value == []:
            continue
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines += [f"- {json.dumps(str(v))}" for v in value]
        else:
            lines.append(f"{key}: {json.dumps(value) if isinstance(value, str) and ':' in value else value}")
    return "\n".join(lines + ["---", ""])


def _fmt(value, spec: str = ",") -> str:
    if value is None:
        return "n/a"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def _shape_section(model_dir: Path, parameters: int) -> list[str]:
    c = _read(model_dir / "config.json")
    return ["## Model", "",
            f"- architecture: `{', '.join(c.get('architectures') or ['?'])}` (Llama: RMSNorm, RoPE, SwiGLU)",
            f"- parameters: **{parameters:,}**",
            f"- layers {c.get('num_hidden_layers')}, hidden {c.get('hidden_size')}, heads "
            f"{c.get('num_attention_heads')} (kv {c.get('num_key_value_heads')}), SwiGLU width "
            f"{c.get('intermediate_size')}, vocabulary {c.get('vocab_size')}, context "
            f"{c.get('max_position_embeddings')} tokens, tied embeddings {c.get('tie_word_embeddings')}", ""]


def _data_section(rows: list[dict]) -> list[str]:
    lines = ["## Training data", ""]
    if not rows:
        return lines + ["Not recorded (no lmforge data manifest among the inputs).", ""]
    for r in rows:
        tokens = r.get("tokens") or {}
        head = f"- `{r['path']}` ({r['stage']}"
        if r.get("datasets"):
            head += "; " + ", ".join(f"`{d}`" for d in r["datasets"])
        lines.append(head + ")")
        if r["stage"] == "pack":
            lines.append(f"  - tokens: train {_fmt(tokens.get('train'))}, val {_fmt(tokens.get('val'))} "
                         f"({_fmt((r.get('sequences') or {}).get('train'))} sequences of {r.get('seq_length')})")
            for source, n in (r.get("per_source") or {}).items():
                lines.append(f"  - {source}: {_fmt(n)} tokens")
        elif r["stage"] == "sft-data":
            ex, at = r.get("examples") or {}, r.get("assistant_tokens") or {}
            lines.append(f"  - conversations: train {_fmt(ex.get('train'))}, val {_fmt(ex.get('val'))}; tokens: "
                         f"train {_fmt(tokens.get('train'))} (assistant, trained on: {_fmt(at.get('train'))}), "
                         f"val {_fmt(tokens.get('val'))}")
    return lines + [""]


def _training_section(stage: str, manifest: dict) -> list[str]:
    f = manifest.get("figures", {})
    lines = ["## Training", "", f"- stage: `{stage}`, {_fmt(f.get('steps'))} steps, "
             f"{_fmt(f.get('tokens_seen'))} tokens seen",
             f"- final training loss {_fmt(f.get('final_loss'), '.4f')}; validation loss "
             f"{_fmt(f.get('val_loss'), '.4f')}, perplexity {_fmt(f.get('val_perplexity'), '.2f')}"]
    lora = f.get("lora")
    if lora:
        lines.append(f"- LoRA r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}; "
                     f"{_fmt(f.get('trainable_parameters'))} trainable parameters; data weights "
                     f"{f.get('data_weights')}, realised mix {f.get('realised_mix')}")
    return lines + [""]


def _expected(stage_key: str) -> dict:
    """The plan's reference ranges, as the evaluation stages define them."""

    if stage_key == "eval-sft":
        return to_dict(SFTExpected())
    return to_dict(ExpectedRanges())


def _range(r, percent: bool = False) -> str:
    if not r or len(r) != 2:
        return "–"
    return f"{r[0]:.0%}–{r[1]:.0%}" if percent else f"{r[0]:g}–{r[1]:g}"


def _eval_section(stage: str, manifest: dict, evaluations: dict) -> list[str]:
    lines = ["## Evaluation (ours beside the plan's reference figures)", "",
             "The plan's figures are for its 23M-parameter model trained on 600M tokens; a smaller model or "
             "budget is expected to land below them.", "", "| metric | ours | plan's reference | source |",
             "|---|---|---|---|"]
    loss = manifest.get("figures", {}).get("final_loss")
    lines.append(f"| final training loss | {_fmt(loss, '.3f')} | {_range(PLAN_LOSS.get(stage))} | manifest.json |")
    for key in sorted({"eval-sft" if stage == "sft" else "eval"} | set(evaluations)):
        record = evaluations.get(key) or {}
        expected = record.get("expected") or _expected(key)
        metrics = record.get("metrics") or {}
        source = f"`{record['results']}`" if record.get("results") else f"not run yet (`lmforge {key}`)"
        for name in sorted(set(expected) | set(metrics)):
            value = metrics.get(name)
            percent = "accuracy" in name
            shown = _fmt(value, ".2%") if percent and isinstance(value, float) else _fmt(value, ".4g")
            lines.append(f"| {name} ({key}) | {shown} | {_range(expected.get(name), percent)} | {source} |")
    return lines + [""]


def _usage_section(model_dir: Path, stage: str) -> list[str]:
    path = str(model_dir)
    if stage == "sft":
        body = [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f"model = AutoModelForCausalLM.from_pretrained({path!r})",
            f"tok = AutoTokenizer.from_pretrained({path!r})",
            'chat = [{"role": "user", "content": "What is a Python list?"}]',
            "inputs = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors=\"pt\", return_dict=True)",
            "out = model.generate(**inputs, max_new_tokens=128)  # stops at <|im_end|> (generation_config.json)",
            'print(tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))']
    else:
        body = [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f"model = AutoModelForCausalLM.from_pretrained({path!r})",
            f"tok = AutoTokenizer.from_pretrained({path!r})",
            'inputs = tok("<s>The Python language", return_tensors="pt")  # a base model continues text',
            "out = model.generate(**inputs, max_new_tokens=64, do_sample=True, top_p=0.9)",
            "print(tok.decode(out[0], skip_special_tokens=True))"]
    return ["## How to use", "", "```python", *body, "```", "",
            f"Or with lmforge: `lmforge chat --model_path {path}`, or in Python "
            f"`model, tok = lmforge.load_model({path!r}); lmforge.reply(model, tok, \"Hi\")`.", ""]


LIMITS = [
    "## Limits and intended use", "",
    "- A small research model trained with lmforge to study the pipeline; not for production or for advice of "
    "any kind. It makes up facts, repeats itself and has no safety tuning.",
    "- It only knows the training data listed above (English text unless stated), up to its context length.",
    "- License: the weights inherit the terms of their training data (see the datasets above); `license: other` "
    "until you settle it.", ""]


def render_card(model_dir: str | os.PathLike) -> str:
    """README.md of an lmforge model directory (pretraining or SFT final/ or a step_N/)."""
    model_dir = Path(model_dir)
    manifest = _read(model_dir / MANIFEST_NAME)
    stage = manifest.get("stage", "model")
    rows = training_data(manifest)
    datasets = sorted({d for r in rows for d in r.get("datasets", []) if d})
    base = _base_model(manifest)
    evaluations = _read(model_dir / EVAL_FILE)
    parameters = count_parameters(model_dir, "model*.safetensors")
    tags = ["lmforge", "llama", "text-generation"] + (["chatml", "sft", "lora-merged"] if stage == "sft" else [])
    meta = {"license": "other", "library_name": "transformers", "pipeline_tag": "text-generation",
            "base_model": base, "datasets": datasets, "tags": tags}
    title = f"# {model_dir.parent.name}/{model_dir.name} — lmforge {stage} model"
    what = ("A chat model: the base model below fine-tuned with LoRA on ChatML conversations, adapters merged "
            "into the weights (the adapter alone is in `adapter/`)." if stage == "sft" else
            "A base language model pretrained from scratch with lmforge (not instruction-tuned).")
    lines = [_front_matter(meta), title, "", what, ""]
    if base:
        lines += [f"Base model: `{base}`.", ""]
    lines += _shape_section(model_dir, parameters)
    lines += _training_section(stage, manifest)
    lines += _data_section(rows)
    external = (manifest.get("figures") or {}).get("external_tokenizer")
    origin = (f"The base model's own (external) tokenizer from `{external['path']}`, sha256 "
              f"`{external['sha256']}` (of its tokenizer.json)" if external else
              f"SentencePiece BPE, sha256 `{manifest.get('tokenizer_sha256')}` (of `spm.model`)")
    lines += ["## Tokenizer", "", f"{origin}; every artifact of this lineage records the same value. Chat format: "
              "ChatML (`<|im_start|>role\\n...<|im_end|>`), the template in `tokenizer_config.json`.", ""]
    lines += _eval_section(stage, manifest, evaluations)
    lines += LIMITS
    lines += _usage_section(model_dir, stage)
    return "\n".join(lines)


def render_adapter_card(adapter_dir: str | os.PathLike) -> str:
    """README.md of a LoRA adapter directory (SFT final/adapter/)."""

    adapter_dir = Path(adapter_dir)
    config = _read(adapter_dir / ADAPTER_CONFIG)
    base_record = _read(adapter_dir / BASE_FILE)
    manifest = _read(adapter_dir.parent / MANIFEST_NAME)
    rows = training_data(manifest)
    base = config.get("base_model_name_or_path")
    meta = {"license": "other", "library_name": "peft", "pipeline_tag": "text-generation", "base_model": base,
            "datasets": sorted({d for r in rows for d in r.get("datasets", []) if d}),
            "tags": ["lmforge", "lora", "peft", "chatml", "sft"]}
    path = str(adapter_dir)
    lines = [_front_matter(meta), "# LoRA adapter — lmforge sft", "",
             f"LoRA adapters (r={config.get('r')}, alpha={config.get('lora_alpha')}, on "
             f"{', '.join(sorted(config.get('target_modules') or []))}) for the base model `{base}`. "
             f"{count_parameters(adapter_dir):,} adapter parameters. The merged model is the parent directory.", "",
             "## Finding the base", "",
             f"`adapter_config.json` records the base by absolute path (`{base}`), so PEFT loads it from any working "
             f"directory; `{BASE_FILE}` records it relative to this directory "
             f"(`{base_record.get('relative_to_adapter', '?')}`), which `lmforge.load_model` uses after the run "
             "was moved. PEFT itself reads only `adapter_config.json` (a relative path there would be taken from "
             "the working directory, not from this folder), so after moving the runs, run "
             f"`lmforge relink-adapter {path}` (with the new path) once: it rewrites the absolute path from the "
             "relative one (or from `--base DIR`) and PEFT alone works again. Tokenizer sha256 of the base: "
             f"`{base_record.get('tokenizer_sha256') or manifest.get('tokenizer_sha256')}`.", ""]
    lines += _training_section("sft", manifest)
    lines += _data_section(rows)
    lines += LIMITS
    lines += ["## How to use", "", "```python", "from peft import AutoPeftModelForCausalLM",
              "from transformers import AutoTokenizer", "",
              f"model = AutoPeftModelForCausalLM.from_pretrained({path!r})",
              f"tok = AutoTokenizer.from_pretrained({str(adapter_dir.parent)!r})",
              'inputs = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, '
              'return_tensors="pt", return_dict=True)',
              "out = model.generate(**inputs, max_new_tokens=128)",
              'print(tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))', "```", "",
              f"After a move: `model, tok = lmforge.load_model({path!r})` (no rewrite needed), or relink as above "
              "for PEFT alone.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- writing

def write_cards(model_dir: str | os.PathLike) -> list[Path]:
    """(Re)write README.md in a model directory and in its adapter/ when there is one."""

    model_dir = Path(model_dir)
    written = [model_dir / CARD_FILE]
    atomic_write_text(written[0], render_card(model_dir))
    adapter = model_dir / "adapter"
    if is_adapter_dir(adapter):
        atomic_write_text(adapter / CARD_FILE, render_adapter_card(adapter))
        written.append(adapter / CARD_FILE)
    return written


def record_evaluation(model_dir: str | os.PathLike, stage: str, metrics: dict, expected: dict | None,
                      results_path: str | os.PathLike) -> None:
    """Store an evaluation's headline metrics beside the model and re-render its card.

    Called by `lmforge eval` / `eval-sft` after their results are written. A model
    directory lmforge did not make (no manifest) is left untouched.
    """
    model_dir = Path(model_dir)
    if not (model_dir / MANIFEST_NAME).is_file():
        return
    path = model_dir / EVAL_FILE
    evaluations = read_json(path, "evaluation record") if path.is_file() else {}
    evaluations[stage] = {"metrics": metrics, "expected": expected or None, "results": str(results_path)}
    atomic_write_json(path, evaluations)
    write_cards(model_dir)
    log.info("model card updated with the %s results: %s", stage, model_dir / CARD_FILE)
