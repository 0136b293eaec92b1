"""The stage contract and the one runner every stage goes through.

A stage declares, before it touches anything, a `StagePlan`: what kind of artifact it
makes, where (`output_dir`, whose manifest marks it complete), from which resolved
config and from which input artifacts. Its build function then makes the outputs and
returns the manifest. `run_stage` owns everything around that, the same for a verb typed
by hand and for a stage run by `lmforge run`:

- up to date? The output's manifest has this config's hash and records, for every input,
  the content identity that input has now (`artifacts.artifact_identity`);
- skip (and say so), unless --force, or the stage has a reason to run anyway (--resume);
- the write lock of the directory the stage writes, taken before anything is written;
- timing, and one line at the end;
- the outcome (ran / skipped, seconds, identity), written as JSON to the file named by
  $LMFORGE_STAGE_OUTCOME when `lmforge run` asks for it. The pipeline learns what a stage
  did from that file, never by reading its log.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from lmforge.artifacts import (
    LOCK_NAME,
    atomic_write_json,
    confined_writes,
    is_up_to_date,
    lock_output_dir,
    unlock_output_dir,
    writable_dir,
)
from lmforge.log import get_logger

log = get_logger(__name__)

OUTCOME_ENV = "LMFORGE_STAGE_OUTCOME"


@dataclass
class StagePlan:
    """What a stage will make, declared before it runs (its identity and its place)."""

    stage: str                                   # the manifest's `stage` ("tokenizer", "pack", ...)
    output_dir: Path                             # the artifact: its manifest.json marks it complete
    config: Any                                  # the resolved config record; its sha256 is part of the identity
    inputs: dict[str, str | Path] = field(default_factory=dict)  # role -> input artifact (directory or file)
    force: bool = False                          # --force: rebuild even when up to date
    run_anyway: str | None = None                # a reason to run without checking (e.g. "--resume")
    workdir: Path | None = None                  # the directory written and locked (default: output_dir)
    also_writes: tuple[Path, ...] = ()           # what else the stage updates (eval: the model's card)

    @property
    def locked_dir(self) -> Path:
        return Path(self.workdir or self.output_dir)


@dataclass
class StageOutcome:
    """What the runner did with a plan."""

    stage: str
    status: Literal["ran", "skipped"]
    output_dir: str
    seconds: float
    identity: str | None = None
    manifest: dict | None = field(default=None, repr=False)  # what build returned (None when skipped)


def is_current(plan: StagePlan) -> bool:
    """True when the plan's output exists, complete, from this config and these inputs."""
    return is_up_to_date(plan.output_dir, plan.stage, plan.config, plan.inputs)


def run_stage(plan: StagePlan, build: Callable[[StagePlan], dict | None]) -> StageOutcome:
    """Run `build(plan)` unless its output is up to date; the one place that decides."""
    started = time.perf_counter()
    if not plan.force and not plan.run_anyway and is_current(plan):
        log.info("%s is up to date, skipping (use --force to redo)", plan.output_dir)
        outcome = StageOutcome(plan.stage, "skipped", str(plan.output_dir), time.perf_counter() - started)
    else:
        if plan.run_anyway:
            log.debug("%s: running (%s)", plan.stage, plan.run_anyway)
        with _locked(plan.locked_dir), confined_writes(plan.locked_dir, *plan.also_writes):
            manifest = build(plan) or None  # None: the run stopped before its output (e.g. stop_after_steps)
        outcome = StageOutcome(plan.stage, "ran", str(plan.output_dir), time.perf_counter() - started,
                               manifest and manifest.get("identity"), manifest)
        log.info("%s: done in %.1f s", plan.stage, outcome.seconds)
    report_outcome(outcome)
    return outcome


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold `directory`'s write lock (main process only, under accelerate). A directory the
    runner created for a stage that then failed before writing anything is removed again,
    so a bad input leaves nothing behind."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    missing = [d for d in (directory, *directory.parents) if not d.exists()]  # what this run creates
    writable_dir(directory)
    lock_output_dir(directory)  # a second writer stops here, before anything is written
    try:
        yield
    except BaseException:
        if missing:
            _remove_if_nothing_written(directory, missing[1:])
        raise


def _remove_if_nothing_written(directory: Path, new_parents: list[Path]) -> None:
    """After a failure: drop `directory`'s empty folders (a resume cache's folder with no file
    yet); if nothing but the lock is left, remove it and the parents made for it, innermost first."""
    _prune_empty_dirs(directory)
    if {p.name for p in directory.iterdir()} - {LOCK_NAME}:
        return  # work a resume can reuse
    unlock_output_dir(directory)
    shutil.rmtree(directory, ignore_errors=True)
    for parent in new_parents:
        try:
            parent.rmdir()
        except OSError:
            break


def _prune_empty_dirs(directory: Path) -> None:
    """Remove the empty folders under `directory`, deepest first; files (a resume cache) stay."""
    for sub in sorted((d for d in directory.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True):
        try:
            sub.rmdir()
        except OSError:
            pass  # not empty: it holds work worth keeping


def report_outcome(outcome: StageOutcome) -> None:
    """Tell `lmforge run` what happened, through the file it named (main process only)."""
    path = os.environ.get(OUTCOME_ENV)
    if not path or os.environ.get("RANK", "0") != "0":
        return
    atomic_write_json(path, {"stage": outcome.stage, "status": outcome.status, "output_dir": outcome.output_dir,
                             "seconds": round(outcome.seconds, 3), "identity": outcome.identity})


def read_outcome(path: str | os.PathLike) -> dict[str, Any] | None:
    """The outcome a stage process reported, or None if it reported none (a tool verb)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("status") in ("ran", "skipped") else None
