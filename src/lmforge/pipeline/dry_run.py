"""`lmforge run --dry-run`: what each stage would do (run, skip, blocked, and why) and the
figures its verb derives, without running anything."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from lmforge.artifacts import describe_input, read_json
from lmforge.cli import Parser, add_flag_aliases, build_parser
from lmforge.data import quickstart_data
from lmforge.errors import LmforgeError
from lmforge.pipeline.pipeline_file import QUICKSTART_DATA, Pipeline, PlannedStage
from lmforge.pipeline.run_record import RUN_FILE, load_run_record


def describe_stage(planned: PlannedStage) -> dict[str, str]:
    """The verb module's optional describe(args): derived figures without running anything.

    What a user can fix (missing inputs, bad arguments) becomes a one-line note, so a dry
    run still prints every command; a bug in a describe() shows its traceback like any bug.
    """
    try:
        if planned.stage.verb == QUICKSTART_DATA:
            module, parser = quickstart_data, Parser()
            module.add_arguments(parser)
            add_flag_aliases(parser)
        else:
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

    try:
        manifest = read_json(manifest_path, "manifest")
    except LmforgeError as exc:
        return RUN, f"its manifest is unreadable ({str(exc).splitlines()[0]})"
    for role, entry in manifest.get("inputs", {}).items():
        if entry.get("path") and describe_input(entry["path"])["identity"] != entry.get("identity"):
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
    previous = load_run_record(run_dir / RUN_FILE).get("stages", {})
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


