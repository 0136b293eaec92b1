"""Run a whole pipeline file: every stage in order, skipping those already up to date.

    lmforge run config/quickstart/pipeline.json            # all stages
    lmforge run PIPELINE.json --dry-run                    # commands and derived figures only
    lmforge run PIPELINE.json --from pack --to eval        # a slice
    lmforge run PIPELINE.json --only pretrain              # one stage (repeatable)

A pipeline file names a run directory, environment variables and an ordered list of
stages. Each stage is one lmforge verb run as a subprocess (`python -m lmforge.cli
VERB ...`, or under `accelerate launch`), exactly as a user would type it; its output
goes to the console and to `<run_dir>/logs/NN_name.log`. The verbs decide themselves
whether their output is up to date (manifest, config and inputs all match); the runner
reports those stages as "skipped (up to date)". The first failure stops the run with
the stage's name and log. Timings go to `<run_dir>/pipeline_run.json`; at the end the
tokenizer lineage of every output is checked and `<run_dir>/REPORT.md` is written.

In argument values, `{run_dir}` and `{pipeline_dir}` are replaced by the run directory
and the pipeline file's directory; in `env` values `${VAR:-default}` reads the caller's
environment.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

from lmforge.config import load_config, parse_set_overrides, spec
from lmforge.errors import LmforgeError
from lmforge.log import get_logger

log = get_logger(__name__)

QUICKSTART_DATA = "quickstart-data"          # a verb-less step: python -m lmforge.data.quickstart_data
RUN_FILE = "pipeline_run.json"
OUTPUT_FLAGS = ("--output-dir", "--output_dir", "--output-file", "--output_file")
# What each verb prints (lmforge.artifacts users log it) when its manifest matches.
UP_TO_DATE = re.compile(r"up to date, skipping", re.IGNORECASE)
ACCELERATE_DEFAULT_ARGS = ["--mixed_precision", "bf16"]


class PipelineError(LmforgeError):
    """A stage failed, or the pipeline file / selection is wrong."""


class PipelineInterrupted(PipelineError):
    """The runner got SIGTERM/SIGINT: it was passed on to the stage, which has stopped."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum  # what a shell reports for a process killed by that signal


# ---------------------------------------------------------------- schema

@dataclasses.dataclass
class Stage:
    name: str = spec(help="unique stage name, used by --from/--to/--only and in log names")
    verb: str = spec(help="an lmforge verb (corpus, tokenizer, ...) or 'quickstart-data'")
    args: dict[str, Any] = spec(default_factory=dict,
                                help="flag -> value; a list gives several values, true a bare flag, false/null nothing")
    set: dict[str, Any] = spec(default_factory=dict, help="config overrides passed as --set KEY=VALUE")
    launcher: Literal["python", "accelerate"] = spec("python", help="plain python or accelerate launch")
    launcher_args: list[str] = spec(default_factory=lambda: list(ACCELERATE_DEFAULT_ARGS),
                                    help="arguments to `accelerate launch` (accelerate launcher only)")
    script: str | None = spec(None, help="run this script (e.g. scripts/40_pretrain.py) instead of -m lmforge.cli")
    env: dict[str, str] = spec(default_factory=dict, help="extra environment variables for this stage only")
    output: str | None = spec(None, help="the stage's output (default: its --output-dir/--output_file flag)")
    log: str | None = spec(None, help="log file name under <run_dir>/logs (default: NN_name.log)")

    def check(self) -> list[str]:
        from lmforge.cli import COMMANDS

        from lmforge.artifacts import safe_name
        from lmforge.errors import ConfigError

        known = [v for v in COMMANDS if v not in ("run",)] + [QUICKSTART_DATA]
        problems = []
        if self.verb not in known:
            problems.append(f"stages[{self.name}].verb: unknown verb {self.verb!r} (known: {', '.join(known)})")
        for key in ("name", "log"):  # both become file names under <run_dir>/logs
            value = getattr(self, key)
            try:
                if value is not None:
                    safe_name(value, f"stages[{self.name}].{key}")
            except ConfigError as exc:
                problems.append(str(exc))
        return problems


@dataclasses.dataclass
class Pipeline:
    run_dir: str = spec(help="where logs, pipeline_run.json and REPORT.md go")
    stages: list[Stage] = spec(help="the stages, in order")
    description: str = spec("", help="one line shown by --dry-run and in REPORT.md")
    env: dict[str, str] = spec(default_factory=dict, help="environment for every stage (${VAR:-default} allowed)")

    def check(self) -> list[str]:
        names = [s.name for s in self.stages]
        dups = sorted({n for n in names if names.count(n) > 1})
        problems = [f"stages: duplicate stage name(s): {', '.join(dups)}"] if dups else []
        if not self.stages:
            problems.append("stages: the pipeline has no stages")
        return problems


@dataclasses.dataclass
class PlannedStage:
    """A stage with its placeholders resolved: what will actually run."""

    index: int                       # 1-based position in the pipeline file
    stage: Stage
    argv: list[str]                  # the verb's own arguments
    command: list[str]               # the full command line
    env: dict[str, str]              # environment additions (pipeline + stage)
    output: Path | None

    @property
    def log_name(self) -> str:
        return self.stage.log or f"{self.index:02d}_{self.stage.name}.log"


# ---------------------------------------------------------------- building commands

_ENV_REF = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand_env_value(value: str, environ: dict[str, str]) -> str:
    """`${VAR}` and `${VAR:-default}` from the caller's environment."""
    return _ENV_REF.sub(lambda m: environ.get(m.group(1)) or (m.group(2) or ""), value)


def _fill(value: Any, places: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, repl in places.items():
            value = value.replace("{" + key + "}", repl)
        return value
    if isinstance(value, list):
        return [_fill(v, places) for v in value]
    return value


def stage_argv(stage: Stage, places: dict[str, str]) -> list[str]:
    """The verb's arguments: flags in file order, then --set overrides."""
    argv: list[str] = []
    for flag, value in stage.args.items():
        value = _fill(value, places)
        if value is None or value is False:
            continue
        if not flag.startswith("-"):
            flag = "--" + flag
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    for key, value in stage.set.items():
        value = _fill(value, places)
        text = value if isinstance(value, str) else json.dumps(value)
        argv += ["--set", f"{key}={text}"]
    return argv


def stage_output(stage: Stage, argv: list[str], places: dict[str, str] | None = None) -> Path | None:
    """Where the stage writes: its `output` field, else its output flag (a file's parent)."""
    if stage.output:
        return Path(_fill(stage.output, places or {}))
    for i, token in enumerate(argv[:-1]):
        if token in OUTPUT_FLAGS:
            path = Path(argv[i + 1])
            return path.parent if "file" in token else path
    return None


def launch_command(stage: Stage, argv: list[str]) -> list[str]:
    """`python -m lmforge.cli VERB ...`, the script, or the same under `accelerate launch`."""
    if stage.verb == QUICKSTART_DATA:
        target = ["-m", "lmforge.data.quickstart_data"]
    elif stage.script:
        target = [stage.script]
    else:
        target = ["-m", "lmforge.cli", stage.verb]
    if stage.launcher == "accelerate":
        # `-m` tells accelerate the target is a module, as `python -m` would.
        module = ["-m", target[1]] if target[0] == "-m" else target
        return [sys.executable, "-m", "accelerate.commands.launch", *stage.launcher_args, *module,
                *target[2:], *argv]
    return [sys.executable, *target, *argv]


def plan(pipeline: Pipeline, pipeline_path: Path, run_dir: Path) -> list[PlannedStage]:
    places = {"run_dir": str(run_dir), "pipeline_dir": str(pipeline_path.parent)}
    base_env = {k: expand_env_value(_fill(v, places), dict(os.environ)) for k, v in pipeline.env.items()}
    planned = []
    for index, stage in enumerate(pipeline.stages, 1):
        argv = stage_argv(stage, places)
        output = stage_output(stage, argv, places)
        env = dict(base_env)
        env.update({k: expand_env_value(_fill(v, places), {**os.environ, **base_env}) for k, v in stage.env.items()})
        planned.append(PlannedStage(index, stage, argv, launch_command(stage, argv), env, output))
    return planned


def select(stages: list[PlannedStage], start: str | None, stop: str | None, only: list[str]) -> list[PlannedStage]:
    """Apply --from/--to/--only (stage names or 1-based numbers)."""
    def position(key: str, flag: str) -> int:
        for s in stages:
            if key == s.stage.name or key == str(s.index):
                return s.index
        import difflib
        close = difflib.get_close_matches(key, [s.stage.name for s in stages], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise PipelineError(f"{flag} {key}: no such stage{hint}; stages: {', '.join(s.stage.name for s in stages)}")

    if only:
        wanted = {position(k, "--only") for item in only for k in item.split(",") if k}
        return [s for s in stages if s.index in wanted]
    lo = position(start, "--from") if start else 1
    hi = position(stop, "--to") if stop else len(stages)
    if lo > hi:
        raise PipelineError(f"--from {start} comes after --to {stop}")
    return [s for s in stages if lo <= s.index <= hi]


def load_pipeline(path: str | Path) -> Pipeline:
    return load_config(path, Pipeline)


# ---------------------------------------------------------------- running

def _children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_stage(planned: PlannedStage, log_dir: Path) -> tuple[int, bool, float, float]:
    """Run one stage, tee its output to its log; return (exit code, skipped?, wall s, CPU s).

    CPU seconds (the stage's processes, user + system) are recorded beside wall time
    because on a shared machine wall time measures the neighbours as much as the stage.
    """
    log_path = log_dir / planned.log_name
    # DIE_WITH_PARENT: lmforge processes started below the stage (accelerate's workers)
    # set the same parent-death signal, so the chain unwinds when the runner is killed.
    env = {**os.environ, **planned.env, "PYTHONUNBUFFERED": "1", DIE_WITH_PARENT: "1"}
    cpu_before = _children_cpu_s()
    start = time.perf_counter()
    skipped = False
    with open(log_path, "w", encoding="utf-8") as log_file:
        log_file.write(f"$ {shlex.join(planned.command)}\n")
        log_file.flush()
        proc = subprocess.Popen(planned.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_stage_preexec(os.getpid()))
        with forward_signals(proc) as received:
            assert proc.stdout is not None
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode("utf-8", errors="replace")
                skipped = skipped or bool(UP_TO_DATE.search(line))
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
    return code, skipped, time.perf_counter() - start, _children_cpu_s() - cpu_before


class _StageSignalled(Exception):
    def __init__(self, signum: int, code: int, seconds: float):
        super().__init__(signum)
        self.signum, self.code, self.seconds = signum, code, seconds


DIE_WITH_PARENT = "LMFORGE_DIE_WITH_PARENT"


def set_parent_death_signal(parent_pid: int | None = None) -> None:
    """Linux: get SIGTERM when the parent process dies (prctl PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:  # the parent died before prctl
        os._exit(143)


def _stage_preexec(runner_pid: int):
    """Run in the stage's process before exec. On Linux, a parent-death signal: a runner
    killed with -9 or by a timeout takes its stage down (SIGTERM: a training stage still
    saves a checkpoint) instead of orphaning it. The stage stays in the runner's process
    group, so Ctrl-C and `kill -- -PGID` reach both at once, as before."""
    def setup() -> None:
        set_parent_death_signal(runner_pid)
    return setup


@contextlib.contextmanager
def forward_signals(proc: subprocess.Popen):
    """While the stage runs, SIGTERM to the runner is passed on to the stage; SIGINT is
    not (Ctrl-C already reached the stage, which shares the terminal's process group);
    a second signal of either kind kills the stage. Yields the list of signals received."""
    received: list[int] = []

    def handler(signum, _frame) -> None:
        received.append(signum)
        if signum == signal.SIGINT and len(received) == 1:
            return
        try:
            proc.send_signal(signum if len(received) == 1 else signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _load_run_record(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _save_run_record(path: Path, record: dict) -> None:
    from lmforge.artifacts import atomic_write_json

    atomic_write_json(path, record)


def execute(stages: list[PlannedStage], run_dir: Path, pipeline_path: Path, total: int) -> dict:
    """Run the selected stages in order; stop at the first failure (PipelineError)."""
    from lmforge.artifacts import machine_info

    log_dir = run_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    record_path = run_dir / RUN_FILE
    record = _load_run_record(record_path)
    record.update({"pipeline": str(pipeline_path), "machine": machine_info(), "cpu_count": os.cpu_count()})
    entries = record.setdefault("stages", {})
    for planned in stages:
        name = planned.stage.name
        print(f"\n=== [{planned.index}/{total}] {name}: {shlex.join(planned.command)}", flush=True)
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        try:
            code, skipped, seconds, cpu_s = run_stage(planned, log_dir)
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
        _save_run_record(record_path, record)
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
    _save_run_record(record_path, record)


# ---------------------------------------------------------------- dry run

def describe_stage(planned: PlannedStage) -> dict[str, str]:
    """The verb module's optional describe(args): derived figures without running anything.

    A dry run must never fail, so anything a describe() raises becomes a one-line note.
    """
    try:
        if planned.stage.verb == QUICKSTART_DATA:
            from lmforge.data import quickstart_data as module
            from lmforge.cli import Parser, add_flag_aliases
            parser = Parser()
            module.add_arguments(parser)
            add_flag_aliases(parser)
        else:
            from lmforge.cli import build_parser
            module, parser = build_parser(planned.stage.verb)
        describe = getattr(module, "describe", None)
        if describe is None:
            return {}
        saved = dict(os.environ)
        os.environ.update(planned.env)
        try:
            return {str(k): _show(v) for k, v in describe(parser.parse_args(planned.argv)).items()}
        finally:
            os.environ.clear()
            os.environ.update(saved)
    except ModuleNotFoundError as exc:
        return {"note": f"verb not available yet ({exc.name})"}
    except SystemExit:
        return {"note": "the verb rejects these arguments (run it to see why)"}
    except LmforgeError as exc:
        return {"note": f"cannot derive figures yet: {str(exc).splitlines()[0]}"}
    except Exception as exc:  # noqa: BLE001 - a dry run prints commands even if a describe() has a bug
        return {"note": f"describe() failed: {type(exc).__name__}: {exc}"}


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


# What a dry run predicts for each stage.
RUN, SKIP, BLOCKED = "run", "skip (up to date)", "blocked"


def output_manifest(output: Path | None) -> Path | None:
    """The manifest that marks a stage's output complete: in the output dir, in its final/
    (sft), or in <arch>/final/ (pretrain writes under <output_dir>/<architecture name>/)."""
    if output is None:
        return None
    for candidate in (output / "manifest.json", output / "final" / "manifest.json"):
        if candidate.is_file():
            return candidate
    return next(iter(sorted(output.glob("*/final/manifest.json"))), None) if output.is_dir() else None


def _path_values(argv: list[str]) -> list[Path]:
    return [Path(v) for v in argv if not v.startswith("-") and "=" not in v and ("/" in v or os.sep in v)]


def _depends_on(planned: PlannedStage, earlier: PlannedStage) -> Path | None:
    """The argument of `planned` that lies in `earlier`'s output, if any."""
    if earlier.output is None:
        return None
    out = earlier.output.resolve()
    for value in _path_values(planned.argv):
        path = value.resolve()
        if path == out or out in path.parents:
            return value
    return None


def _config_paths(argv: list[str]) -> list[Path]:
    return [Path(argv[i + 1]) for i, flag in enumerate(argv[:-1]) if flag == "--config"]


def _own_status(planned: PlannedStage, previous: dict) -> tuple[str, str]:
    """Status from the stage's own output: present, inputs unchanged, config older, same command."""
    if planned.output is None:
        return RUN, "no output to compare (this verb always runs)"
    if "--force" in planned.argv:
        return RUN, "--force"
    manifest_path = output_manifest(planned.output)
    if manifest_path is None:
        return RUN, f"no complete output yet ({planned.output} has no manifest.json)"
    from lmforge.artifacts import describe_input, read_json

    try:
        manifest = read_json(manifest_path, "manifest")
    except LmforgeError as exc:
        return RUN, f"its manifest is unreadable ({str(exc).splitlines()[0]})"
    for role, entry in manifest.get("inputs", {}).items():
        if entry.get("path") and describe_input(entry["path"])["manifest_sha256"] != entry.get("manifest_sha256"):
            return RUN, f"its input '{role}' ({entry['path']}) changed since it was built"
    built = manifest_path.stat().st_mtime
    for config in _config_paths(planned.argv):
        if config.is_file() and config.stat().st_mtime > built:
            return RUN, f"{config} was edited after the output was built"
    last = previous.get(planned.stage.name, {})
    if last.get("command") and last["command"][1:] != planned.command[1:]:
        return RUN, "its command changed since the last run here"
    same = "same command as the last run here" if last.get("command") else "no run recorded here"
    # the verb itself compares the full resolved config when it runs; this is the cheap view
    return SKIP, f"output complete, inputs unchanged, config not edited since ({same})"


def stage_statuses(stages: list[PlannedStage], chosen: list[PlannedStage], previous: dict) -> dict[int, tuple[str, str]]:
    """run / skip (up to date) / blocked, with the reason, for each chosen stage (by index).

    A stage whose input comes from a stage that will run is run after it; a stage whose
    input is missing and made by a stage outside the selection is blocked.
    """
    chosen_ids = {p.index for p in chosen}
    status: dict[int, tuple[str, str]] = {}
    for planned in stages:
        if planned.index not in chosen_ids:
            continue
        verdict = None
        for earlier in stages[:planned.index - 1]:
            arg = _depends_on(planned, earlier)
            if arg is None:
                continue
            name = earlier.stage.name
            if earlier.index in chosen_ids and status[earlier.index][0] == BLOCKED:
                verdict = (BLOCKED, f"its input {arg} comes from stage '{name}', which is blocked")
                break
            if earlier.index in chosen_ids and status[earlier.index][0] == RUN:
                verdict = verdict or (RUN, f"stage '{name}' runs first and rebuilds its input {arg}")
            elif earlier.index not in chosen_ids and output_manifest(earlier.output) is None:
                verdict = (BLOCKED, f"needs {arg} from stage '{name}', which is not built and not selected "
                                    f"(add it, e.g. --from {name})")
                break
        if verdict is None:
            try:
                verdict = _own_status(planned, previous)
            except OSError as exc:      # a dry run reports; it never stops on what it cannot read
                verdict = (RUN, f"its output could not be checked ({exc})")
        status[planned.index] = verdict
    return status


def dry_run(stages: list[PlannedStage], total: int, pipeline: Pipeline, run_dir: Path,
            all_stages: list[PlannedStage] | None = None) -> None:
    previous = _load_run_record(run_dir / RUN_FILE).get("stages", {})
    statuses = stage_statuses(all_stages or stages, stages, previous)
    if pipeline.description:
        print(pipeline.description)
    for key in pipeline.env:
        print(f"env {key}={stages[0].env[key] if stages else pipeline.env[key]}")
    for planned in stages:
        state, reason = statuses[planned.index]
        print(f"\n[{planned.index}/{total}] {planned.stage.name} ({planned.stage.verb})")
        print(f"  → {state}: {reason}")
        print(f"  $ {shlex.join(planned.command)}")
        if planned.stage.env:
            print("  env: " + " ".join(f"{k}={planned.env[k]}" for k in planned.stage.env))
        for key, value in describe_stage(planned).items():
            print(f"  {key}: {value}")
        last = previous.get(planned.stage.name, {}).get("ran_wall_s")
        if last is not None:      # the best time estimate we have: this stage's last real run here
            print(f"  last run here: {last:.1f} s")
    counts = {state: sum(1 for s, _ in statuses.values() if s == state) for state in (RUN, SKIP, BLOCKED)}
    print(f"\ndry run: {counts[RUN]} to run, {counts[SKIP]} up to date, {counts[BLOCKED]} blocked; nothing was run")


# ---------------------------------------------------------------- verb

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", help="pipeline JSON file (e.g. config/quickstart/pipeline.json)")
    parser.add_argument("--run-dir", help="override the file's run_dir (logs, REPORT.md, {run_dir} paths)")
    parser.add_argument("--from", dest="start", metavar="STAGE", help="start at this stage (name or number)")
    parser.add_argument("--to", dest="stop", metavar="STAGE", help="stop after this stage (name or number)")
    parser.add_argument("--only", action="append", default=[], metavar="STAGE",
                        help="run only these stages (repeatable or comma-separated)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print every stage's command and derived figures; run nothing")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override the pipeline file, e.g. --set run_dir=runs/x")
    parser.add_argument("--no-report", action="store_true", help="skip the lineage check and REPORT.md at the end")


def main(args: argparse.Namespace) -> int:
    path = Path(args.pipeline)
    overrides = parse_set_overrides(args.set)
    if args.run_dir:
        overrides["run_dir"] = args.run_dir
    pipeline = load_config(path, Pipeline, overrides=overrides)
    run_dir = Path(_fill(pipeline.run_dir, {"pipeline_dir": str(path.parent)}))
    planned = plan(pipeline, path, run_dir)
    chosen = select(planned, args.start, args.stop, args.only)
    if args.dry_run:
        dry_run(chosen, len(planned), pipeline, run_dir, planned)
        return 0
    started = time.perf_counter()
    try:
        record = execute(chosen, run_dir, path, len(planned))
    except PipelineError:
        if not args.no_report:          # the report then shows which stage failed, with its log
            from lmforge.pipeline import report
            try:
                report.write_report(run_dir)
            except LmforgeError:
                pass
        raise
    seconds = time.perf_counter() - started
    ran = [s.stage.name for s in chosen if record["stages"][s.stage.name]["status"] == "ran"]
    skipped = [s.stage.name for s in chosen if record["stages"][s.stage.name]["status"] == "skipped"]
    code = 0
    if not args.no_report:
        code = finish(run_dir, planned)
    print(f"\n✅ Pipeline {path} finished in {seconds:.1f}s: {len(ran)} stage(s) ran, "
          f"{len(skipped)} skipped (up to date)" + (f": {', '.join(skipped)}" if skipped else ""))
    print(f"   📁 Run directory: {run_dir}  (logs/, {RUN_FILE}, REPORT.md)")
    return code


def finish(run_dir: Path, planned: list[PlannedStage]) -> int:
    """Lineage table over every stage output that exists, then REPORT.md."""
    from lmforge.pipeline import report
    from lmforge.pipeline import verify

    outputs = [p.output for p in planned if p.output is not None and p.output.exists()]
    code = 0
    if outputs:
        result = verify.verify_paths(outputs)
        print()
        print(verify.format_table(result))
        code = 0 if result.ok else 1
    path = report.write_report(run_dir)
    print(f"   📝 Report: {path}")
    return code
