"""`lmforge pretrain --init_from DIR`: continue pretraining from existing weights.

DIR is a Hugging Face model directory (an lmforge final/ or step_N/, or any
LlamaForCausalLM saved with safetensors). Before a single weight is copied, two things
are checked, each failing with one clear message:

- the tokenizer: DIR's tokenizer sha256 (its manifest's `tokenizer_sha256`, else the
  sha256 of the `spm.model` it carries) must be the run's `--tokenizer_dir` one. Ids
  of another tokenizer would mean other words: continuing would silently train
  garbage;
- the shape: every tensor the run's architecture defines must exist in DIR with the
  same shape, and DIR must hold nothing else. The context length
  (`max_position_embeddings`) may differ: Llama's RoPE has no learned positions.

The optimizer and schedule start fresh (this is a new run seeded with weights, not a
resume; `--resume` continues an interrupted run).
"""

from __future__ import annotations

import os
from pathlib import Path

from lmforge.artifacts import MANIFEST_NAME, describe_input, read_json, sha256_file
from lmforge.errors import ArtifactError, ConfigError, LineageError
from lmforge.log import get_logger
from lmforge.model.architecture import llama_config

log = get_logger(__name__)


def source_tokenizer_sha256(model_dir: Path) -> str:
    """The tokenizer sha256 a model directory was trained with."""
    manifest = model_dir / MANIFEST_NAME
    if manifest.is_file():
        recorded = read_json(manifest, "model manifest").get("tokenizer_sha256")
        if recorded:
            return recorded
    spm = model_dir / "spm.model"
    if spm.is_file():
        return sha256_file(spm)
    raise LineageError(f"--init_from {model_dir}: cannot tell which tokenizer it was trained with "
                       "(no manifest.json tokenizer_sha256, no spm.model)")


def check_source(model_dir: str | os.PathLike, tokenizer_sha256: str) -> Path:
    """Refuse a directory that is not a model, or that was trained with another tokenizer."""
    root = Path(model_dir)
    if not (root / "config.json").is_file() or not sorted(root.glob("model*.safetensors")):
        raise ArtifactError(f"--init_from {root}: not a model directory (needs config.json and model*.safetensors)")
    found = source_tokenizer_sha256(root)
    if found != tokenizer_sha256:
        raise LineageError(f"--init_from {root} was trained with tokenizer {found[:16]}…, but --tokenizer_dir is "
                           f"{tokenizer_sha256[:16]}…: its token ids would mean other words")
    return root


def check_shape(model_dir: str | os.PathLike, arch, vocab_size: int) -> None:
    """Compare DIR's config.json with the run's architecture (before anything is written)."""

    root = Path(model_dir)
    source = read_json(root / "config.json", "model config")
    ours = llama_config(arch, vocab_size).to_dict()
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "vocab_size", "tie_word_embeddings")
    differ = [f"{k} {source.get(k)} vs {ours.get(k)}" for k in keys if source.get(k) != ours.get(k)]
    if differ:
        raise ConfigError(f"--init_from {root} does not fit the architecture of this run ({', '.join(differ)}); "
                          "use the architecture it was trained with")


def identity(model_dir: str | os.PathLike) -> dict:
    """What the run records about its starting weights (part of the run's identity)."""
    root = Path(model_dir)
    described = describe_input(root)
    weights = {p.name: sha256_file(p) for p in sorted(root.glob("model*.safetensors"))}
    return {"path": str(root), "identity": described["identity"], "weights_sha256": weights}


def load_initial_weights(model, model_dir: str | os.PathLike) -> None:
    """Copy DIR's weights into `model` after checking every name and shape."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    root = Path(model_dir)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found: dict[str, tuple] = {}
    for path in sorted(root.glob("model*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            found.update({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()})
    tied = getattr(model.config, "tie_word_embeddings", False)
    if tied:  # save_pretrained stores a tied output projection once, as the embedding
        expected.pop("lm_head.weight", None)
        found.pop("lm_head.weight", None)
    wrong = [f"{n} {found[n]} vs {s}" for n, s in expected.items() if n in found and found[n] != s]
    missing = [n for n in expected if n not in found]
    extra = [n for n in found if n not in expected]
    if wrong or missing or extra:
        details = "; ".join(filter(None, [
            f"shape differs: {', '.join(wrong[:3])}" if wrong else "",
            f"missing: {', '.join(missing[:3])}" if missing else "",
            f"unexpected: {', '.join(extra[:3])}" if extra else ""]))
        raise ConfigError(f"--init_from {root} does not fit the architecture of this run ({details}); "
                          "use the architecture it was trained with")
    state = {}
    for path in sorted(root.glob("model*.safetensors")):
        state.update(load_file(path))
    model.load_state_dict(state, strict=not tied)
    if tied:
        model.tie_weights()
    log.info("initial weights: %s (%d tensors); optimizer and schedule start fresh", root, len(state))
