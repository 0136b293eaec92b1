"""Logging, progress bars and memory figures shared by every stage."""

from __future__ import annotations

import logging
import os
import resource
import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time (test capture, redirection),
    not to the stream that happened to be current when logging was set up."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def setup_logging(level: str = "INFO") -> None:
    """Configure the 'lmforge' logger once, to stderr, with a compact format."""
    logger = logging.getLogger("lmforge")
    logger.setLevel(getattr(logging, level.upper(), logging.INFO))
    if not logger.handlers:
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.propagate = False


def get_logger(name: str) -> logging.Logger:
    """A child of the 'lmforge' logger, e.g. get_logger(__name__)."""
    return logging.getLogger(name if name.startswith("lmforge") else f"lmforge.{name}")


def progress_enabled() -> bool:
    """Bars are drawn on terminals; in CI and pipes they would only flood the log."""
    if os.environ.get("LMFORGE_PROGRESS") in ("0", "1"):
        return os.environ["LMFORGE_PROGRESS"] == "1"
    return sys.stderr.isatty()


def progress(iterable: Iterable[T] | None = None, **kwargs) -> Iterator[T]:
    """A tqdm bar on stderr (disabled off-terminal); kwargs go to tqdm."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", not progress_enabled())
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("mininterval", 0.5)
    return tqdm(iterable, file=sys.stderr, **kwargs)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    On Linux this reads VmHWM: ru_maxrss can carry a large parent's peak across
    fork+exec, which would inflate the figure of a stage started by `lmforge run`.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / (1024 * 1024)


def human_count(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.2f}"


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
