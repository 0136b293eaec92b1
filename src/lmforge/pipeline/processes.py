"""The processes of `lmforge run`: each stage in its own process group, signals passed on,
and stages that die with their runner.

Why a process group of its own: Ctrl-C in a terminal signals the whole foreground group.
If the stage shared the runner's group it would get SIGINT twice (once from the terminal,
once passed on by the runner), and a second Ctrl-C means "abort at once" to a training
stage, which would then lose its checkpoint. With its own group, the stage hears about a
signal exactly once, from the runner, whether the user pressed Ctrl-C, ran `kill -INT` on
the runner, or `kill -- -PGID` on the runner's group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from typing import Callable, Iterator

DIE_WITH_PARENT = "LMFORGE_DIE_WITH_PARENT"
FORWARDED = (signal.SIGTERM, signal.SIGINT)
PASS_ON_TIMES = 2  # the first two signals are passed on as they are (save, then abort); the third kills


def set_parent_death_signal(parent_pid: int | None = None) -> None:
    """Linux: get SIGTERM when the parent process dies (prctl PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:  # the parent died before prctl
        os._exit(143)


def stage_preexec(runner_pid: int) -> Callable[[], None]:
    """Run in the stage's process before exec: its own process group (see the module doc)
    and, on Linux, a parent-death signal, so a runner killed with -9 or by a timeout takes
    its stage down (SIGTERM: a training stage still saves a checkpoint) instead of orphaning it."""
    def setup() -> None:
        os.setpgid(0, 0)
        set_parent_death_signal(runner_pid)
    return setup


@contextlib.contextmanager
def forward_signals(proc: subprocess.Popen) -> Iterator[list[int]]:
    """While the stage runs, SIGTERM and SIGINT to the runner are passed on to the stage's
    process group; after PASS_ON_TIMES signals the stage is killed. Yields the signals received."""
    received: list[int] = []

    def handler(signum, _frame) -> None:
        received.append(signum)
        sent = signum if len(received) <= PASS_ON_TIMES else signal.SIGKILL
        try:
            os.killpg(proc.pid, sent)
        except (ProcessLookupError, PermissionError):
            pass

    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {sig: signal.signal(sig, handler) for sig in FORWARDED}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
