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

After a move, `python -m lmforge.adapter ADAPTER_DIR` (`relink`) rewrites the
absolute path from the relative one (or from `--base DIR`, tokenizer-checked), and
updates the adapter's entries in its model directory's manifest, so PEFT alone works
again. The merged model in the SFT `final/` needs no base at all: it is the portable form.
"""

from __future__ import annotations

import os
from pathlib import Path

from .artifacts import MANIFEST_NAME, atomic_write_json, check_tokenizer_lineage, describe_file, read_json
from .errors import ArtifactError
from .log import get_logger

log = get_logger(__name__)
ADAPTER_CONFIG = "adapter_config.json"
BASE_FILE = "base_model.json"
RELINK_HINT = "python -m lmforge.adapter {}"  # the command that makes PEFT find a moved base again


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


# ---------------------------------------------------------------- relink after a move

def relink(adapter_dir: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> Path:
    """Point adapter_config.json at the base's current absolute path; return that path.

    The base is `base_dir` when given, else the one base_model.json names relative to
    the adapter (the tree moved as a whole), else the recorded absolute path. Its
    tokenizer must be the one the adapter was trained with. When the adapter sits in an
    lmforge model directory (SFT final/adapter), the manifest entries of the two
    rewritten files are updated, so `lmforge verify` and sha256 checks still pass.
    """
    adapter = Path(adapter_dir)
    if not is_adapter_dir(adapter):
        raise ArtifactError(f"{adapter} is not a LoRA adapter directory (no {ADAPTER_CONFIG})")
    config = read_json(adapter / ADAPTER_CONFIG, "adapter config")
    sidecar = read_json(adapter / BASE_FILE, "adapter base record") if (adapter / BASE_FILE).is_file() else {}
    base = _choose_base(adapter, config, sidecar, base_dir)
    _check_base_tokenizer(adapter, base, sidecar.get("tokenizer_sha256"))
    if config.get("base_model_name_or_path") == str(base) and sidecar.get("absolute") == str(base):
        log.info("%s already names its base %s: nothing to do", adapter, base)
        return base
    record_base(adapter, base, tokenizer_sha256=sidecar.get("tokenizer_sha256"))
    _update_manifest(adapter)
    log.info("%s now names its base %s (PEFT alone loads it from any working directory)", adapter, base)
    return base


def _choose_base(adapter: Path, config: dict, sidecar: dict, base_dir) -> Path:
    if base_dir is not None:
        if not (Path(base_dir) / "config.json").is_file():
            raise ArtifactError(f"--base {base_dir}: not a model directory (no config.json)")
        return Path(base_dir).resolve()
    # Relative first: after a copy the old absolute path may still exist, but the base of
    # this tree is the one beside it.
    candidates = [adapter / sidecar["relative_to_adapter"]] if sidecar.get("relative_to_adapter") else []
    if config.get("base_model_name_or_path"):
        candidates.append(Path(config["base_model_name_or_path"]))
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates) or "nothing recorded"
    raise ArtifactError(f"{adapter}: base model not found (tried {tried}); give its directory with --base DIR")


def _check_base_tokenizer(adapter: Path, base: Path, expected: str | None) -> None:
    """The base must carry the tokenizer the adapter was trained with (when the adapter says which)."""
    if not expected:
        return
    from .external import hf_tokenizer_sha256, is_external_model

    if is_external_model(base):
        found = hf_tokenizer_sha256(base)
    else:
        found = read_json(base / MANIFEST_NAME, "manifest").get("tokenizer_sha256")
    check_tokenizer_lineage(expected, f"adapter {adapter}", found, f"base model {base}")


def _update_manifest(adapter: Path) -> None:
    """Re-describe the rewritten files in the parent model directory's manifest (when they are listed)."""
    root = adapter.parent
    path = root / MANIFEST_NAME
    if not path.is_file():
        return
    manifest = read_json(path, "manifest")
    rewritten = {(adapter / name).relative_to(root).as_posix() for name in (ADAPTER_CONFIG, BASE_FILE)}
    outputs = manifest.get("outputs", [])
    for i, entry in enumerate(outputs):
        if isinstance(entry, dict) and entry.get("path") in rewritten:
            outputs[i] = describe_file(root / entry["path"], root)
    atomic_write_json(path, manifest)
    if (root / "config.json").is_file():
        from .model_card import write_cards

        write_cards(root)  # the cards show the base's path and the load snippet


# ---------------------------------------------------------------- command line

def add_arguments(parser) -> None:
    parser.add_argument("adapter_dir", help="a LoRA adapter directory (e.g. checkpoints/sft/tiny/final/adapter)")
    parser.add_argument("--base", default=None, metavar="DIR",
                        help="the base model directory (default: the one recorded relative to the adapter)")


def main(args) -> int:
    base = relink(args.adapter_dir, args.base)
    print(f"{args.adapter_dir}: base_model_name_or_path = {base}")
    return 0


if __name__ == "__main__":  # `python -m lmforge.adapter DIR`: the lmforge CLI's errors and exit codes
    import sys

    from .cli import COMMANDS
    from .cli import main as cli_main

    COMMANDS.setdefault("relink-adapter", ("lmforge.adapter", "after a move: point a LoRA adapter at its base again"))
    sys.exit(cli_main(["relink-adapter", *sys.argv[1:]]))
