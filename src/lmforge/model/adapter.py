"""Portable LoRA adapters: how an adapter directory finds its base model.

How PEFT resolves the base (read in peft 0.21, `AutoPeftModel.from_pretrained`): it
reads `base_model_name_or_path` from adapter_config.json and hands it, unchanged, to
`AutoModelForCausalLM.from_pretrained`. That string is either an absolute path, a
path relative to the *process's working directory* (never to the adapter directory),
or a hub repo id; PEFT has no hook to resolve it otherwise. So no value can serve
both "any working directory" and "after the run was moved": a string that follows a
`mv` does not exist. lmforge therefore records the base twice:

1. adapter_config.json: `base_model_name_or_path` is the base's **absolute** path.
   `AutoPeftModelForCausalLM.from_pretrained(adapter)` works from any working
   directory while the base stays where it is.
2. base_model.json (beside adapter_config.json): the base's path **relative to the
   adapter directory**, its absolute path and the tokenizer sha256. Moving the tree
   that holds both runs keeps the relative path true: `lmforge.load_model(adapter)`
   and `resolve_base` try the recorded absolute path, then the relative one.

After a move, `lmforge relink-adapter ADAPTER_DIR` (`relink`) rewrites the
absolute path from the relative one (or from `--base DIR`, tokenizer-checked), and
updates the adapter's entries in its model directory's manifest, so PEFT alone works
again. The merged model in the SFT `final/` needs no base at all: it is the portable form.
"""

from __future__ import annotations

import os
from pathlib import Path

from lmforge.artifacts import atomic_write_json, read_json
from lmforge.errors import ArtifactError
from lmforge.log import get_logger

log = get_logger(__name__)
ADAPTER_CONFIG = "adapter_config.json"
BASE_FILE = "base_model.json"
RELINK_HINT = "lmforge relink-adapter {}"  # the command that makes PEFT find a moved base again


def is_adapter_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def record_base(adapter_dir: str | os.PathLike, base_dir: str | os.PathLike, *, final_adapter_dir: str | os.PathLike
                | None = None, tokenizer_sha256: str | None = None) -> None:
    """Write both records of the base into a saved adapter directory.

    `final_adapter_dir` is where the adapter will live once its (temporary) export
    directory is renamed into place; the relative path is computed from there.
    """
    adapter = Path(adapter_dir)
    base = Path(base_dir).resolve()
    where = Path(final_adapter_dir or adapter).resolve()
    config = read_json(adapter / ADAPTER_CONFIG, "adapter config")
    config["base_model_name_or_path"] = str(base)
    atomic_write_json(adapter / ADAPTER_CONFIG, config)
    atomic_write_json(adapter / BASE_FILE, {"relative_to_adapter": os.path.relpath(base, where),
                                            "absolute": str(base), "tokenizer_sha256": tokenizer_sha256})


def resolve_base(adapter_dir: str | os.PathLike) -> Path:
    """The base model directory of an adapter: recorded absolute path, else the one relative to the adapter."""
    adapter = Path(adapter_dir)
    config = read_json(adapter / ADAPTER_CONFIG, "adapter config")
    recorded = config.get("base_model_name_or_path")
    candidates = [Path(recorded)] if recorded and Path(recorded).is_absolute() else []
    sidecar = adapter / BASE_FILE
    relative = read_json(sidecar, "adapter base record").get("relative_to_adapter") if sidecar.is_file() else None
    if relative:
        candidates.append(adapter / relative)
    elif recorded and not Path(recorded).is_absolute():
        candidates.append(Path(recorded))  # an adapter saved by PEFT alone: cwd-relative, as PEFT reads it
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            if recorded and candidate.resolve() != Path(recorded).resolve():
                log.warning("%s: base found at %s; adapter_config.json still names %s, so PEFT alone will not "
                            "find it: run `%s`", adapter, candidate.resolve(), recorded, RELINK_HINT.format(adapter))
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates) or "nothing recorded"
    raise ArtifactError(f"{adapter}: base model not found (tried {tried}); move it back, or point the adapter "
                        f"at it with `{RELINK_HINT.format(adapter)} --base DIR`")


def load_adapter_model(adapter_dir: str | os.PathLike, *, base_dir: str | os.PathLike | None = None, dtype=None):
    """Base model (resolved as above unless `base_dir` is given) with the adapter applied, in eval mode."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_path = Path(base_dir) if base_dir else resolve_base(adapter_dir)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    base = AutoModelForCausalLM.from_pretrained(str(base_path), use_safetensors=True, **kwargs)
    return PeftModel.from_pretrained(base, str(adapter_dir)).eval()
