"""Training checkpoints: save, find, load and rotate `step_N/` directories.

A checkpoint directory is written whole under a temporary name and renamed into
place, with its manifest.json inside, so a run killed mid-save never leaves a
`step_N/` that looks complete. Contents:

    config.json, model.safetensors   the model as `save_pretrained` writes it
                                     (a PEFT model writes adapter_model.safetensors +
                                     adapter_config.json: only what training changes)
    tokenizer files                  so the directory loads with AutoTokenizer
    optimizer.pt, scheduler.pt       torch.save, read back with weights_only=True
    rng_state_<rank>.pt              python, numpy and torch RNG states of each rank
    meta.json                        step, tokens seen, data position, resolved config,
                                     tokenizer_sha256
    manifest.json                    the artifact manifest, last

Nothing here is unpickled with arbitrary code: weights are safetensors and the
rest loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import math
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

from lmforge.artifacts import MANIFEST_NAME, atomic_path, atomic_write_json, load_manifest, read_json, write_manifest
from lmforge.errors import ArtifactError
from lmforge.log import get_logger
from lmforge.tokenizer.spm import copy_tokenizer_files

log = get_logger(__name__)

STEP_DIR = re.compile(r"^step_(\d+)$")
META_FILE = "meta.json"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"step_{step}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with a manifest) in `run_dir`, oldest first."""
    root = Path(run_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / MANIFEST_NAME).is_file() and (child / META_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def rotate_checkpoints(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints (0 keeps all); returns the deleted."""
    if keep_last <= 0:
        return []
    found = list_checkpoints(run_dir)
    doomed = [path for _, path in found[:-keep_last]]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


# ---------------------------------------------------------------- RNG

def capture_rng_state() -> dict:
    """RNG states as tensors and plain data, safe for torch.load(weights_only=True)."""
    import numpy as np
    import torch

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- model weights

def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def save_model(model, out_dir: Path) -> list[str]:
    """`save_pretrained` in safetensors; returns the file names written."""
    before = set(p.name for p in out_dir.iterdir()) if out_dir.exists() else set()
    model.save_pretrained(out_dir, safe_serialization=True)
    return sorted(p.name for p in out_dir.iterdir() if p.is_file() and p.name not in before)


def load_model_weights(model, ckpt_dir: Path) -> None:
    """Load the weights a checkpoint saved back into `model` (full model or PEFT adapters)."""
    from safetensors.torch import load_file

    if is_peft_model(model):
        from peft import set_peft_model_state_dict

        path = ckpt_dir / "adapter_model.safetensors"
        if not path.is_file():
            raise ArtifactError(f"{ckpt_dir} holds no adapter_model.safetensors: not a LoRA checkpoint")
        set_peft_model_state_dict(model, load_file(path))
        return
    files = sorted(ckpt_dir.glob("model*.safetensors"))
    if not files:
        raise ArtifactError(f"{ckpt_dir} holds no model*.safetensors")
    state: dict = {}
    for f in files:
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    # save_pretrained drops the tied output projection; anything else missing is a real mismatch.
    missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise ArtifactError(f"{ckpt_dir}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if getattr(model.config, "tie_word_embeddings", False) and hasattr(model, "tie_weights"):
        model.tie_weights()


# ---------------------------------------------------------------- save / load

def save_checkpoint(
    out_dir: Path,
    *,
    model,
    optimizer,
    scheduler_state: dict,
    rng_states: list[dict],
    meta: dict,
    stage: str,
    tokenizer_dir: str | None,
    tokenizer_sha256: str | None,
    inputs: dict | None = None,
    figures: dict | None = None,
) -> Path:
    """Write a complete checkpoint directory atomically (main process only).

    rng_states: one per rank (gathered by the caller), saved as rng_state_<rank>.pt.
    """
    import torch

    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        outputs = save_model(model, tmp)
        if tokenizer_dir:
            outputs += copy_tokenizer_files(tokenizer_dir, tmp)
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        torch.save(scheduler_state, tmp / SCHEDULER_FILE)
        outputs += [OPTIMIZER_FILE, SCHEDULER_FILE]
        for rank, state in enumerate(rng_states):
            torch.save(state, tmp / f"rng_state_{rank}.pt")
            outputs.append(f"rng_state_{rank}.pt")
        atomic_write_json(tmp / META_FILE, meta)
        outputs.append(META_FILE)
        write_manifest(tmp, stage, config=meta.get("config"), outputs=sorted(set(outputs)), inputs=inputs,
                       figures=figures or {}, tokenizer_sha256=tokenizer_sha256,
                       extra={"checkpoint": {"step": meta.get("step"), "tokens_seen": meta.get("tokens_seen")}})
    return out_dir


def load_meta(ckpt_dir: str | Path) -> dict:
    ckpt = Path(ckpt_dir)
    if not (ckpt / MANIFEST_NAME).is_file():
        raise ArtifactError(f"{ckpt} is not a complete checkpoint (no {MANIFEST_NAME}); it was interrupted while saving")
    meta = read_json(ckpt / META_FILE, "checkpoint meta")
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        raise damaged(ckpt, f"{META_FILE} has no step")
    return meta


def damaged(ckpt: Path, why: str) -> ArtifactError:
    """The one error for a checkpoint whose files cannot be read back."""
    return ArtifactError(f"checkpoint {ckpt} is damaged ({why}); delete it to resume from the previous "
                         "step_N/, or pass --force to start over")


def _read(ckpt: Path, name: str, load):
    """Run `load()`; any failure to decode the file (truncated, garbled) becomes `damaged`."""
    try:
        return load()
    except ArtifactError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch/safetensors raise many types for a bad file
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise damaged(ckpt, f"{name}: {type(exc).__name__}: {first}") from None


def load_checkpoint(ckpt_dir: str | Path, *, model, optimizer, rank: int) -> dict[str, Any]:
    """Restore weights and optimizer state in place; return {meta, scheduler, rng} for the loop.

    Every file is first checked against the checkpoint's manifest (sizes: a
    truncated file is caught before torch reads it); a file that still fails to
    decode is reported as a damaged checkpoint, never as a traceback.
    """
    import torch

    ckpt = Path(ckpt_dir)
    meta = load_meta(ckpt)
    try:
        load_manifest(ckpt, verify="size")
    except ArtifactError as exc:
        raise damaged(ckpt, str(exc)) from None
    _read(ckpt, "model weights", lambda: load_model_weights(model, ckpt))
    _read(ckpt, OPTIMIZER_FILE, lambda: optimizer.load_state_dict(
        torch.load(ckpt / OPTIMIZER_FILE, weights_only=True, map_location="cpu")))
    scheduler = _read(ckpt, SCHEDULER_FILE, lambda: torch.load(ckpt / SCHEDULER_FILE, weights_only=True))
    rng_path = ckpt / f"rng_state_{rank}.pt"
    rng = _read(ckpt, rng_path.name, lambda: torch.load(rng_path, weights_only=True)) if rng_path.is_file() else None
    if rng is None:
        log.warning("%s has no RNG state for rank %d (different process count?): dropout noise will differ", ckpt, rank)
    return {"meta": meta, "scheduler": scheduler, "rng": rng}


# ---------------------------------------------------------------- small pieces of loop state

def loss_window(prior: list[float], history: list[dict], size: int) -> list[float]:
    """The last `size` step losses: those restored from a checkpoint, then this process's.

    Saved in meta.json as `recent_losses`, so a resumed run reports the same final
    loss as an uninterrupted one (the weights already were identical).
    """
    # skipped (non-finite) steps are not losses of the model the run reports
    return [x for x in [*prior, *(h["loss"] for h in history)][-max(1, size):] if math.isfinite(x)]


def restored_losses(meta: dict) -> list[float]:
    """`recent_losses` of a checkpoint's meta (older checkpoints: the mean, once)."""
    losses = meta.get("recent_losses")
    if isinstance(losses, list) and all(isinstance(x, (int, float)) for x in losses):
        return [float(x) for x in losses]
    return [float(meta["recent_loss"])] if isinstance(meta.get("recent_loss"), (int, float)) else []


def metrics_lines_up_to(path: Path, step: int) -> list[str]:
    """Lines of metrics.jsonl for steps <= `step`; a torn line (a kill mid-write) is dropped."""
    import json

    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:
            log.warning("%s: dropping an unreadable line (torn by an interrupted write): %.60s", path, line)
            continue
        if isinstance(record, dict) and isinstance(record.get("step", 0), int) and record.get("step", 0) <= step:
            kept.append(line)
    return kept


# ---------------------------------------------------------------- preemption (SIGTERM, Ctrl-C)

class Terminated(ArtifactError):
    """Training stopped on SIGTERM or SIGINT after saving a checkpoint (exit 128 + the signal's
    number, as a shell reports a process killed by it: 143 for SIGTERM, 130 for Ctrl-C)."""

    exit_code = 143

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class TerminationRequest:
    """SIGTERM or a first Ctrl-C during training: finish the current step, save a checkpoint, stop.

    The handler only sets a flag; the loop checks it at each step boundary
    (`should_stop`), so a preempted or interrupted job loses less than one step. With
    several processes the flag is max-reduced, so every rank stops at the same step.
    A second Ctrl-C means "now": the previous handlers come back and KeyboardInterrupt
    is raised at once (the CLI says "interrupted", exit 130; the last saved checkpoint,
    and any half-written one's temp folder, are dealt with by the next run).
    """

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def install(self) -> "TerminationRequest":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        import signal

        if signum == signal.SIGINT and self.signum is not None:
            self.restore()
            raise KeyboardInterrupt  # the second request, and it is a Ctrl-C: abort now
        if self.signum is None:
            self.signum = signum
            if signum == signal.SIGINT and os.environ.get("RANK", "0") == "0":
                # Said at once (the step may take a while), with a raw write: logging or print
                # from a signal handler can re-enter a stream the loop was writing to.
                os.write(2, b"\nCtrl-C: saving a checkpoint after this step, then stopping "
                            b"(press Ctrl-C again to abort without saving)\n")

    def restore(self) -> None:
        """Put back the handlers that were there before `install`."""
        import signal

        for sig, old in self._previous.items():
            signal.signal(sig, old)
        self._previous = {}

    def should_stop(self, accelerator) -> bool:
        if accelerator.num_processes == 1:
            return self.signum is not None
        import torch

        flag = torch.tensor([1.0 if self.signum is not None else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)

    def finish(self, step: int, max_steps: int, run_dir: Path) -> None:
        """Restore the previous handlers; raise Terminated when the run stopped on a signal."""
        import signal

        self.restore()
        if self.signum is not None and step < max_steps:
            name = signal.Signals(self.signum).name
            raise Terminated(f"stopped by {name}{' (Ctrl-C)' if name == 'SIGINT' else ''} after step {step}: "
                             f"checkpoint {step_dir(run_dir, step)} saved; rerun the same command to continue "
                             "from it", self.signum)
