"""Watching a training run: a live bar or periodic lines, and experiment trackers.

Training reports through two objects, both silent on non-main ranks:

- `TrainingProgress`: on a terminal, a live bar (step/total, loss, tokens/s, MFU when
  the device peak is known, ETA, tokens seen); otherwise plain lines, the first right
  after step 1 and then at least every `LMFORGE_PROGRESS_INTERVAL` seconds (default 30),
  so a slow machine never looks hung. The trainer's own `log_every` line still goes to
  the log; this module only fills the silence between them.
- `Trackers`: accelerate's experiment trackers (`log_with`): tensorboard, wandb,
  trackio, mlflow, ... whichever are asked for and installed. An asked-for tracker that
  is not installed costs one warning line, never the run.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from lmforge.log import get_logger, human_count, progress_enabled

log = get_logger(__name__)

DEFAULT_INTERVAL_S = 30.0


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class TrainingProgress:
    """Progress of one training run from `start_step` to `total_steps`."""

    def __init__(self, total_steps: int, *, start_step: int = 0, stop_at: int | None = None, label: str = "train",
                 main: bool = True, flops_per_token: float | None = None, peak_flops: float | None = None,
                 bar: bool | None = None, interval_s: float | None = None, stream=None):
        self.total = total_steps
        self.stop_at = stop_at or total_steps
        self.start_step = start_step
        self.label = label
        self.main = main
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops            # all devices together, FLOP/s
        self.stream = stream
        self.interval_s = interval_s if interval_s is not None else \
            float(os.environ.get("LMFORGE_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S))
        self.use_bar = main and (progress_enabled() if bar is None else bar)
        self._bar = None
        self._redirect = None
        self._t0 = self._last_line = time.perf_counter()
        self._window: list[tuple[float, int]] = []    # (time, tokens seen) of recent steps, for a smooth rate
        self.lines = 0

    # ------------------------------------------------------------ figures

    def rate(self) -> float:
        """Tokens per second over the last few steps (the first step, warm-up included, only until there are more)."""
        if len(self._window) < 2:
            if not self._window:
                return 0.0
            t, tokens = self._window[0]
            return tokens / max(1e-9, t - self._t0) if tokens else 0.0
        (t0, k0), (t1, k1) = self._window[0], self._window[-1]
        return (k1 - k0) / max(1e-9, t1 - t0)

    def mfu(self, tok_s: float) -> float | None:
        if not (self.flops_per_token and self.peak_flops):
            return None
        return tok_s * self.flops_per_token / self.peak_flops

    def eta_s(self, step: int) -> float:
        done = step - self.start_step
        elapsed = time.perf_counter() - self._t0
        return elapsed / max(1, done) * (self.stop_at - step)

    def summary(self, step: int, loss: float | None, tokens: int) -> str:
        tok_s = self.rate()
        mfu = self.mfu(tok_s)
        parts = [f"{self.label} step {step}/{self.total}"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        parts.append(f"{human_count(tok_s)} tok/s")
        if mfu is not None:
            parts.append(f"MFU {mfu * 100:.1f}%")
        parts += [f"{human_count(tokens)} tokens seen", f"ETA {_duration(self.eta_s(step))}"]
        return " | ".join(parts)

    # ------------------------------------------------------------ events

    def start(self, tokens_per_step: int | None = None) -> None:
        """The first line, printed before the first (often slowest) step."""
        if not self.main:
            return
        per_step = f", {human_count(tokens_per_step)} tokens per step" if tokens_per_step else ""
        first = "resuming at" if self.start_step else "starting at"
        self._print(f"{self.label}: {first} step {self.start_step} of {self.total}{per_step}; "
                    f"progress {'bar below' if self.use_bar else f'every {self.interval_s:.0f}s at most'}")
        if self.use_bar:
            from tqdm.auto import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=self.stop_at, initial=self.start_step, unit="step", desc=self.label,
                             file=self.stream or sys.stderr, dynamic_ncols=True, mininterval=0.5, smoothing=0.1)
            # the trainer's log lines (loss every log_every steps, evals, checkpoints) print above the bar
            self._redirect = logging_redirect_tqdm(loggers=[logging.getLogger("lmforge")])
            self._redirect.__enter__()

    def step(self, step: int, loss: float | None, tokens: int) -> None:
        """After each optimizer step: refresh the bar, or print a line when one is due."""
        if not self.main:
            return
        now = time.perf_counter()
        self._window = (self._window + [(now, tokens)])[-20:]
        if self._bar is not None:
            tok_s, postfix = self.rate(), []
            if loss is not None:
                postfix.append(f"loss {loss:.3f}")
            postfix.append(f"{human_count(tok_s)} tok/s")
            mfu = self.mfu(tok_s)
            if mfu is not None:
                postfix.append(f"MFU {mfu * 100:.1f}%")
            postfix.append(f"{human_count(tokens)} tok")
            self._bar.set_postfix_str(" | ".join(postfix), refresh=False)
            self._bar.update(step - self._bar.n)
            return
        if self.line_due(step):
            self._print(self.summary(step, loss, tokens))

    def line_due(self, step: int) -> bool:
        """Whether `step` prints a line (off a terminal): the first step, then every interval.

        The trainer reads its device-side figures back only when this is true, so a
        heartbeat costs one host sync per interval, never one per step.
        """
        if not self.main or self._bar is not None:
            return False
        # the trainer always logs the last step itself: no second line for it here
        first = step == self.start_step + 1
        return step < self.stop_at and (first or time.perf_counter() - self._last_line >= self.interval_s)

    def logged(self) -> None:
        """The trainer just printed its own progress line: the next heartbeat can wait."""
        self._last_line = time.perf_counter()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None

    def _print(self, text: str) -> None:
        self._last_line = time.perf_counter()
        self.lines += 1
        log.info("%s", text)       # above the bar while one is drawn (logging_redirect_tqdm)


# ---------------------------------------------------------------- experiment trackers

def requested_trackers(report_to: str | list[str] | None, tensorboard: bool) -> tuple[list[str], list[str]]:
    """(asked for explicitly, wanted if installed) from `report_to` and the tensorboard switch."""
    if isinstance(report_to, str):
        report_to = [t for t in report_to.replace(" ", ",").split(",") if t]
    asked = [t.strip().lower() for t in report_to or []]
    optional = ["tensorboard"] if tensorboard and "tensorboard" not in asked else []
    return asked, optional


def available_trackers() -> set[str]:
    """Tracker names accelerate can run here: built-in ones whose package is installed, and
    any tracker class registered with `accelerate.tracking.register_tracker_class`."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers
    from accelerate.utils import LoggerType

    builtin = {str(t) for t in LoggerType}
    return {str(t) for t in get_available_trackers()} | {n for n in LOGGER_TYPE_TO_CLASS if n not in builtin}


class Trackers:
    """accelerate trackers for one run, started through the Accelerator's `log_with`."""

    def __init__(self, accelerator, run_dir: Path, *, asked: list[str], optional: list[str],
                 project: str = "lmforge", config: dict | None = None):
        self.acc = accelerator
        self.names: list[str] = []
        if not accelerator.is_main_process:
            return
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        installed = available_trackers()
        for name in asked:
            if name not in LOGGER_TYPE_TO_CLASS:
                log.warning("tracker %r is unknown (known: %s); training continues without it",
                            name, ", ".join(sorted(LOGGER_TYPE_TO_CLASS)))
            elif name not in installed:
                log.warning("tracker %r was asked for but is not installed (pip install %s); training continues "
                            "without it, metrics.jsonl has every logged value", name, name.replace("_", "-"))
            else:
                self.names.append(name)
        for name in optional:
            if name in installed:
                self.names.append(name)
            else:
                log.info("%s is not installed: no %s events (pip install %s); metrics.jsonl has every logged value",
                         name, name, name)
        if not self.names:
            return
        trackers = []
        for name in self.names:
            cls = LOGGER_TYPE_TO_CLASS[name]
            # local trackers write under the run directory, e.g. <run_dir>/tensorboard/
            trackers.append(cls(name, str(run_dir)) if cls.requires_logging_directory else cls(project))
        accelerator.log_with = [*getattr(accelerator, "log_with", []), *trackers]
        accelerator.init_trackers(project, config=_flat_config(config or {}))
        log.info("experiment trackers: %s", ", ".join(self.names))

    def log(self, scalars: dict[str, float], step: int) -> None:
        values = {k: float(v) for k, v in scalars.items() if v is not None}
        if self.names and values:
            self.acc.log(values, step=step)

    def finish(self) -> None:
        if self.names:
            # not accelerator.end_training(): that also tears down the process group
            for tracker in self.acc.trackers:
                tracker.finish()
            self.names = []


def _flat_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """Hyperparameters as flat scalar key/values (what every tracker accepts)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_config(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat
