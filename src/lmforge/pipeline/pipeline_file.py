"""A pipeline file: its schema, and the commands it resolves to.

A pipeline file (config/quickstart/pipeline.json, config/pipelines/*.json) names a run
directory, environment variables and an ordered list of stages, each one lmforge verb with
its arguments. `plan` turns it into the exact commands `lmforge run` will start; `select`
applies --from/--to/--only. In argument values, `{run_dir}` and `{pipeline_dir}` are
replaced by the run directory and the pipeline file's directory; in `env` values
`${VAR:-default}` reads the caller's environment.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Literal

from lmforge.artifacts import safe_name
from lmforge.cli import COMMANDS
from lmforge.config import load_config, spec
from lmforge.errors import ConfigError, LmforgeError

QUICKSTART_DATA = "quickstart-data"          # a verb-less step: python -m lmforge.data.quickstart_data
OUTPUT_FLAGS = ("--output-dir", "--output_dir", "--output-file", "--output_file")
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
class PipelineStage:
    """One entry of a pipeline file's `stages`: a verb and its arguments."""

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
    stages: list[PipelineStage] = spec(help="the stages, in order")
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
    stage: PipelineStage
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


def fill_placeholders(value: Any, places: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, repl in places.items():
            value = value.replace("{" + key + "}", repl)
        return value
    if isinstance(value, list):
        return [fill_placeholders(v, places) for v in value]
    return value


def stage_argv(stage: PipelineStage, places: dict[str, str]) -> list[str]:
    """The verb's arguments: flags in file order, then --set overrides."""
    argv: list[str] = []
    for flag, value in stage.args.items():
        value = fill_placeholders(value, places)
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
        value = fill_placeholders(value, places)
        text = value if isinstance(value, str) else json.dumps(value)
        argv += ["--set", f"{key}={text}"]
    return argv


def stage_output(stage: PipelineStage, argv: list[str], places: dict[str, str] | None = None) -> Path | None:
    """Where the stage writes: its `output` field, else its output flag (a file's parent)."""
    if stage.output:
        return Path(fill_placeholders(stage.output, places or {}))
    for i, token in enumerate(argv[:-1]):
        if token in OUTPUT_FLAGS:
            path = Path(argv[i + 1])
            return path.parent if "file" in token else path
    return None


def launch_command(stage: PipelineStage, argv: list[str]) -> list[str]:
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
    base_env = {k: expand_env_value(fill_placeholders(v, places), dict(os.environ)) for k, v in pipeline.env.items()}
    planned = []
    for index, stage in enumerate(pipeline.stages, 1):
        argv = stage_argv(stage, places)
        output = stage_output(stage, argv, places)
        env = dict(base_env)
        env.update({k: expand_env_value(fill_placeholders(v, places), {**os.environ, **base_env}) for k, v in stage.env.items()})
        planned.append(PlannedStage(index, stage, argv, launch_command(stage, argv), env, output))
    return planned


def select(stages: list[PlannedStage], start: str | None, stop: str | None, only: list[str]) -> list[PlannedStage]:
    """Apply --from/--to/--only (stage names or 1-based numbers)."""
    def position(key: str, flag: str) -> int:
        for s in stages:
            if key == s.stage.name or key == str(s.index):
                return s.index
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


