"""`lmforge run`: a whole pipeline file, every stage in order, skipping those already up to date.

    lmforge run config/quickstart/pipeline.json            # all stages
    lmforge run PIPELINE.json --dry-run                    # commands and derived figures only
    lmforge run PIPELINE.json --from pack --to eval        # a slice
    lmforge run PIPELINE.json --only pretrain              # one stage (repeatable)

Each stage is one lmforge verb run as a subprocess (`python -m lmforge.cli VERB ...`, or
under `accelerate launch`), exactly as a user would type it; its output goes to the console
and to `<run_dir>/logs/NN_name.log`. Inside the verb, the stage runner
(`lmforge.pipeline.stage`) decides whether the output is up to date and reports what it
did; this command records that as "ran" or "skipped (up to date)". The first failure stops
the run with the stage's name and log. Timings go to `<run_dir>/pipeline_run.json`; at the
end the tokenizer lineage of every output is checked and `<run_dir>/REPORT.md` is written.
One `lmforge run` at a time per run directory (a second one stops with a clear error).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lmforge.artifacts import lock_output_dir
from lmforge.config import load_config, parse_set_overrides
from lmforge.errors import LmforgeError
from lmforge.pipeline import report, verify
from lmforge.pipeline.dry_run import dry_run
from lmforge.pipeline.execute import execute
from lmforge.pipeline.pipeline_file import Pipeline, PipelineError, PlannedStage, fill_placeholders, plan, select
from lmforge.pipeline.run_record import RUN_FILE

RUN_LOCK = ".lmforge-run.lock"


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
    run_dir = Path(fill_placeholders(pipeline.run_dir, {"pipeline_dir": str(path.parent)}))
    planned = plan(pipeline, path, run_dir)
    chosen = select(planned, args.start, args.stop, args.only)
    if args.dry_run:
        dry_run(chosen, len(planned), pipeline, run_dir, planned)
        return 0
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_output_dir(run_dir, lock_name=RUN_LOCK)  # logs/ and pipeline_run.json have one writer
    started = time.perf_counter()
    try:
        record = execute(chosen, run_dir, path, len(planned))
    except PipelineError:
        if not args.no_report:          # the report then shows which stage failed, with its log
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
