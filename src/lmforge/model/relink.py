"""`lmforge relink-adapter ADAPTER_DIR`: after a move, point a LoRA adapter at its base again.

PEFT finds an adapter's base only by the absolute path in adapter_config.json (see
`lmforge.model.adapter` for why no other value works). After the run directory moved, this
rewrites that path from the base's path relative to the adapter (or `--base DIR`), checks the
base was made with the adapter's tokenizer, updates the two files' entries in the model's
manifest and re-renders the model cards; `AutoPeftModelForCausalLM` then works again.
"""

from __future__ import annotations

import os
from pathlib import Path

from lmforge.artifacts import (
    MANIFEST_NAME,
    artifact_identity,
    atomic_write_json,
    check_tokenizer_lineage,
    describe_file,
    read_json,
)
from lmforge.errors import ArtifactError
from lmforge.log import get_logger
from lmforge.model.adapter import ADAPTER_CONFIG, BASE_FILE, is_adapter_dir, record_base
from lmforge.model.card import write_cards
from lmforge.model.external import base_tokenizer_sha256

log = get_logger(__name__)


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
    if expected:
        check_tokenizer_lineage(expected, f"adapter {adapter}", base_tokenizer_sha256(base), f"base model {base}")


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
    manifest["identity"] = artifact_identity(manifest)  # what the model now is: its adapter names another path
    atomic_write_json(path, manifest)
    if (root / "config.json").is_file():
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
