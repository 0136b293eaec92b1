"""Running a pipeline's stages: each one a subprocess, its output teed to its log, its
outcome read from the stage runner's report, timings kept in pipeline_run.json."""

from __future__ import annotations

import os
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from lmforge.artifacts import machine_info
from lmforge.pipeline.pipeline_file import PipelineError, PipelineInterrupted, PlannedStage
from lmforge.pipeline.processes import DIE_WITH_PARENT, forward_signals, stage_preexec
from lmforge.pipeline.run_record import RUN_FILE, load_run_record, save_run_record
from lmforge.pipeline.stage import OUTCOME_ENV, read_outcome


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_step(planned: PlannedStage, log_dir: Path) -> tuple[int, bool, float, float]:
    """Run one stage, tee its output to its log; return (exit code, skipped?, wall s, CPU s).

    Whether the stage skipped comes from the outcome its runner reports
    (`lmforge.pipeline.stage`), never from its log. CPU seconds (the stage's processes,
    user + system) are recorded beside wall time because on a shared machine wall time
    measures the neighbours as much as the stage.
    """
    log_path = log_dir / planned.log_name
    outcome_path = log_dir / f".{planned.log_name}.outcome.json"
    outcome_path.unlink(missing_ok=True)  # a report left by an earlier run must not be read as this one's
    # DIE_WITH_PARENT: lmforge processes started below the stage (accelerate's workers)
    # set the same parent-death signal, so the chain unwinds when the runner is killed.
    env = {**os.environ, **planned.env, "PYTHONUNBUFFERED": "1", DIE_WITH_PARENT: "1", OUTCOME_ENV: str(outcome_path)}
    cpu_before = _children_cpu_s()
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log_file:
        log_file.write(f"$ {shlex.join(planned.command)}\n")
        log_file.flush()
        proc = subprocess.Popen(planned.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=stage_preexec(os.getpid()))
        with forward_signals(proc) as received:
            assert proc.stdout is not None
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode("utf-8", errors="replace")
                sys.stdout.write(line)
                sys.stdout.flush()
                log_file.write(line)
                log_file.flush()            # so `tail -f` on the log follows the stage live
            code = proc.wait()
        if received:
            log_file.write(f"[lmforge run] {signal.Signals(received[0]).name} passed on to the stage; "
                           f"it exited with code {code}\n")
    if received:
        raise _StageSignalled(received[0], code, time.perf_counter() - start)
    outcome = read_outcome(outcome_path)
    outcome_path.unlink(missing_ok=True)
    skipped = code == 0 and outcome is not None and outcome["status"] == "skipped"
    return code, skipped, time.perf_counter() - start, _children_cpu_s() - cpu_before


class _StageSignalled(Exception):
    def __init__(self, signum: int, code: int, seconds: float):
        super().__init__(signum)
        self.signum, self.code, self.seconds = signum, code, seconds


def execute(stages: list[PlannedStage], run_dir: Path, pipeline_path: Path, total: int) -> dict:
    """Run the selected stages in order; stop at the first failure (PipelineError)."""
    log_dir = run_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    record_path = run_dir / RUN_FILE
    record = load_run_record(record_path)
    record.update({"pipeline": str(pipeline_path), "machine": machine_info(), "cpu_count": os.cpu_count()})
    entries = record.setdefault("stages", {})
    for planned in stages:
        name = planned.stage.name
        print(f"\n=== [{planned.index}/{total}] {name}: {shlex.join(planned.command)}", flush=True)
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        try:
            code, skipped, seconds, cpu_s = run_step(planned, log_dir)
        except _StageSignalled as stop:
            _record_interrupted(record_path, record, planned, log_dir, started, stop)
            sig = signal.Signals(stop.signum).name
            raise PipelineInterrupted(
                f"{sig} received during stage '{name}' ({planned.index}/{total}): passed on to the stage, which "
                f"exited with code {stop.code}; rerun the same command to continue. Log: "
                f"{log_dir / planned.log_name}", stop.signum) from None
        entry = entries.setdefault(name, {})
        entry.update({"index": planned.index, "verb": planned.stage.verb, "command": planned.command,
                      "log": str(log_dir / planned.log_name), "started": started, "wall_s": round(seconds, 2), "cpu_s": round(cpu_s, 2),
                      "exit_code": code, "output": str(planned.output) if planned.output else None})
        if code != 0:
            entry["status"] = "failed"
        elif skipped:
            entry["status"] = "skipped"
        else:
            entry["status"] = "ran"
            entry["ran_wall_s"] = round(seconds, 2)    # the last real run, kept when later runs skip
            entry["ran_cpu_s"] = round(cpu_s, 2)
        save_run_record(record_path, record)
        if code != 0:
            raise PipelineError(
                f"stage '{name}' ({planned.index}/{total}, lmforge {planned.stage.verb}) failed with exit code "
                f"{code} after {seconds:.1f}s; its full output is in {log_dir / planned.log_name}")
        status = "skipped (up to date)" if skipped else "done"
        print(f"=== [{planned.index}/{total}] {name}: {status} in {seconds:.1f}s", flush=True)
    return record


def _record_interrupted(record_path: Path, record: dict, planned: PlannedStage, log_dir: Path, started: str,
                        stop: _StageSignalled) -> None:
    entry = record.setdefault("stages", {}).setdefault(planned.stage.name, {})
    entry.update({"index": planned.index, "verb": planned.stage.verb, "command": planned.command,
                  "log": str(log_dir / planned.log_name), "started": started, "wall_s": round(stop.seconds, 2),
                  "exit_code": stop.code, "status": "interrupted", "signal": signal.Signals(stop.signum).name,
                  "output": str(planned.output) if planned.output else None})
    save_run_record(record_path, record)


