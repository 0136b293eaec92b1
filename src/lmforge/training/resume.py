"""Exact resume: which checkpoint a training run continues from, and starting over.

Pretraining and SFT share these rules. A run is identified by its resolved config and the
content identity of its data (`identity`), recorded in every checkpoint's meta.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lmforge.artifacts import sha256_json
from lmforge.errors import ConfigError
from lmforge.log import get_logger
from lmforge.training.checkpoint import latest_checkpoint, list_checkpoints, load_meta

log = get_logger(__name__)


def choose_resume(run_dir: Path, identity: dict, *, resume: str | None, force: bool) -> Path | None:
    """Which checkpoint to continue from, or None for a fresh start.

    `resume`: a checkpoint path, "latest", or None. Without it, a run folder whose latest
    checkpoint has the same identity continues by itself (an interrupted run), one with another
    identity is refused, and `force` starts over. Other data under the same paths is always refused.
    """

    if resume:
        path = Path(resume) if resume != "latest" else latest_checkpoint(run_dir)
        if path is None:
            log.warning("--resume: no checkpoint in %s yet, starting from scratch", run_dir)
            return None
        meta = load_meta(path)  # raises a clear error for a missing or incomplete checkpoint
        refuse_other_data(path, _identity_of(meta), identity)
        if sha256_json(_identity_of(meta)) != sha256_json(identity):
            changed = sorted(k for k in identity if _identity_of(meta).get(k) != identity[k])
            log.warning("--resume: %s was made with a different config (%s differ); continuing with the new one",
                        path, ", ".join(changed))
        return path
    latest = latest_checkpoint(run_dir)
    if latest is None or force:
        return None
    recorded = _identity_of(load_meta(latest))
    refuse_other_data(latest, recorded, identity)
    if sha256_json(recorded) == sha256_json(_as_recorded(identity, recorded)):
        log.info("found %s from an interrupted run with the same config: continuing (--force starts over)", latest.name)
        return latest
    raise ConfigError(f"{run_dir} holds checkpoints (latest {latest.name}) of a run with a different config: "
                      "pass --resume to continue from them anyway, or --force to start over")


def _identity_of(meta: dict) -> dict:
    return meta.get("config") or {}


def _as_recorded(identity: dict, recorded: dict) -> dict:
    """`identity` without the keys a checkpoint from an earlier lmforge could not record
    (its data identities), so an interrupted run from before still continues by itself."""
    if "data_identities" in recorded:
        return identity
    return {k: v for k, v in identity.items() if k != "data_identities"}


def refuse_other_data(checkpoint: Path, recorded: dict, current: dict) -> None:
    """Stop when a checkpoint was trained on other data than the data now under the same paths:
    continuing would silently mix two datasets into one run."""
    before, now = recorded.get("data_identities"), current.get("data_identities")
    if before is None or before == now:
        return  # checkpoints from before data identities were recorded: paths only, as then
    changed = [d for d, a, b in zip(current["data_dirs"], before, now) if a != b] or current["data_dirs"]
    raise ConfigError(f"{checkpoint} was trained on other data than what {', '.join(changed)} now hold(s) "
                      "(the packed data were rebuilt with different content): resuming would mix two datasets; "
                      "use --force to start over, or point --data_dirs at the original data")


def clear_run_dir(run_dir: Path) -> None:
    """--force: forget earlier checkpoints, final model and metrics of this run folder."""

    for _, path in list_checkpoints(run_dir):
        shutil.rmtree(path)
    for name in ("final", "metrics.jsonl", "tensorboard"):
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
