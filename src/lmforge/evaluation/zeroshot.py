"""Zero-shot tasks through lm-evaluation-harness, in-process, on the model already loaded.

`lmforge eval --tasks piqa,arc_easy,...` (or `zero_shot.tasks` in an evaluation config)
runs the harness's OWN task definitions (prompts, answer choices, metrics, stderr): its
task folders are indexed from the installed `lm_eval` package and `lm_eval.simple_evaluate`
scores an `HFLM` that wraps the model and Hugging Face tokenizer lmforge has already
loaded (lineage checked). Nothing here re-implements a task.

Data: with a mirror (LMFORGE_MIRROR / --mirror), each task's dataset is read from
`<mirror>/<hub id>/[<config>/][<split>/]` (the hub id, config and split the task file
names, see lmforge.evaluation.zeroshot_tasks) in its hub schema: the task is given as a group entry
that overrides only `dataset_path` (the `json` or `parquet` builder), `dataset_kwargs.
data_files` and the unused splits, which the harness merges over its own task. Without a
mirror the harness reads the hub itself.

Each task's result carries the harness's accuracy and stderr, the length-normalised
accuracy where the task defines one, the chance baseline (1 / choices, averaged over the
scored documents) and a flag when the score is within 2 standard errors of chance (see
near_chance): at 10-100M parameters that flag separates signal from noise.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from lmforge.config import spec
from lmforge.data.sources import data_fingerprint, mirror_files
from lmforge.errors import ConfigError, DataError
from lmforge.evaluation.zeroshot_tasks import TASKS, ZeroShotTask, parse_task_list
from lmforge.log import get_logger

log = get_logger(__name__)
GROUP = "lmforge_zero_shot"
CHANCE_SIGMAS = 2.0


@dataclass
class ZeroShotSettings:
    tasks: list[str] = spec(default_factory=list, help="lm-eval task names, e.g. piqa, arc_easy (empty: none); "
                                                       "`--tasks a,b` overrides")
    limit: int | None = spec(None, min=1, help="score only the first N documents of each task (partial)")
    bootstrap_iters: int = spec(1000, min=0, help="harness bootstrap resamples for non-mean metrics (lambada "
                                                  "perplexity stderr)")

    def check(self) -> list[str]:
        if not isinstance(self.tasks, list):
            return []
        unknown = [t for t in self.tasks if t not in TASKS]
        return [f"tasks: unknown zero-shot task(s) {', '.join(unknown)}; available: {', '.join(TASKS)}"] if unknown else []


def apply_tasks_flag(overrides: dict, flag: str | None) -> None:
    """`--tasks a,b` -> the zero_shot.tasks override (checked against the known tasks)."""
    if flag is not None:
        overrides["zero_shot.tasks"] = parse_task_list(flag)


def import_harness():
    """The lm_eval package, or one clear error saying how to install it."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM  # noqa: F401  (needs transformers/accelerate: the hf extra)
    except ImportError as exc:
        raise ConfigError(f"zero-shot tasks need lm-evaluation-harness ({exc}); install it with "
                          "pip install 'lmforge[eval]' (or pip install 'lm_eval[hf]')") from None
    return lm_eval


def task_data(task: ZeroShotTask, mirror: Path | None) -> dict:
    """The group entry for one task: its name plus, with a mirror, the overrides that point it at the files."""

    if mirror is None:
        return {"task": task.name}
    try:
        files = mirror_files(mirror, *task.hub)
    except DataError as exc:
        base = mirror / task.hub_id
        searched = ([base / task.config / task.split, base / task.config] if task.config else []) + \
            [base / task.split, base]
        raise DataError(f"zero-shot task {task.name}: dataset {task.hub_id} (config {task.config or 'none'}, "
                        f"split {task.split}) not found in the mirror; searched "
                        f"{', '.join(str(p) for p in searched)} ({exc})") from None
    builder = "parquet" if all(f.endswith(".parquet") for f in files) else "json"
    entry = {"task": task.name, "dataset_path": builder, "dataset_name": None,
             "dataset_kwargs": {"data_files": {task.split: files}},
             # The harness loads every split a task names (even for 0 shots): only the scored one exists here.
             "training_split": None, "validation_split": None, "test_split": None}
    entry[task.split_key] = task.split
    return entry


def data_identity(tasks: list[str], mirror: Path | None) -> dict:
    """What the tasks' data were (mirror files' sizes and times), for the up-to-date check."""

    return {name: data_fingerprint(hub=TASKS[name].hub, mirror=mirror)
            for name in tasks}


def preflight(settings: ZeroShotSettings, mirror: Path | None) -> list[dict]:
    """Check the harness and every task's data before a model is loaded; return the task entries."""
    if not settings.tasks:
        return []
    import_harness()
    return [task_data(TASKS[name], mirror) for name in settings.tasks]


def run(loaded, settings: ZeroShotSettings, mirror: Path | None, batch_size: int) -> dict:
    """Score the tasks with the harness on the loaded model; return {task: result} plus run facts."""
    lm_eval = import_harness()
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    entries = preflight(settings, mirror)
    started = time.time()
    tasks_root = Path(lm_eval.__file__).parent / "tasks"
    # Only the needed task folders are indexed: the whole index takes ~15 s.
    folders = sorted({str(tasks_root / TASKS[name].task_dir) for name in settings.tasks})
    manager = TaskManager(include_defaults=False, include_path=folders)
    model = HFLM(pretrained=loaded.model, tokenizer=loaded.encoder.hf, batch_size=batch_size,
                 max_length=loaded.max_length)
    from jinja2.exceptions import UndefinedError  # lm_eval's prompt templates are jinja2

    try:
        out = lm_eval.simple_evaluate(model=model, tasks=[{"group": GROUP, "task": entries}], task_manager=manager,
                                      limit=settings.limit, log_samples=True, num_fewshot=0,
                                      bootstrap_iters=settings.bootstrap_iters)
    except (FileNotFoundError, ValueError, KeyError, TypeError, IndexError, UndefinedError) as exc:
        # What the harness raises when a record lacks a field its task file reads (a file not in the hub schema).
        raise DataError(f"lm-evaluation-harness could not score {', '.join(settings.tasks)}: "
                        f"{type(exc).__name__}: {exc} (are the mirror files in the dataset's hub schema?)") from None
    results = {name: summarise(name, out, settings.limit, mirror) for name in settings.tasks}
    items = [item_row(name, sample) for name in settings.tasks for sample in out["samples"][name]]
    for name, r in results.items():
        log.info("%s: acc %.4f ± %.4f (chance %.3f)%s%s", name, r["acc"] if r["acc"] is not None else math.nan,
                 r["acc_stderr"] or 0.0, r["chance"],
                 f", acc_norm {r['acc_norm']:.4f}" if "acc_norm" in r else "",
                 "  [within 2 stderr of chance]" if r["near_chance"] else "")
    return {"tasks": results, "harness_version": getattr(lm_eval, "__version__", "unknown"),
            "num_fewshot": 0, "limit": settings.limit, "max_length": loaded.max_length,
            "partial": any(r["partial"] for r in results.values()), "seconds": round(time.time() - started, 2),
            "items": items}


def item_row(task: str, sample: dict) -> dict:
    """One scored document for zero_shot_items.jsonl: the harness's log-likelihood per choice and its verdicts."""
    row = {"task": task, "doc_id": sample["doc_id"], "target": sample.get("target"),
           "loglikelihoods": [float(resp[0][0]) for resp in sample["resps"]]}
    row.update({m: sample[m] for m in sample.get("metrics", []) if isinstance(sample.get(m), (int, float))})
    return row


def split_items(zero_shot: dict) -> list[dict]:
    """Take the per-document rows out of a run's result (they go to their own file, not results.json)."""
    return zero_shot.pop("items", [])


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def near_chance(score: float | None, stderr: float | None, chance: float, documents: int) -> bool:
    """True when the score is within CHANCE_SIGMAS standard errors of chance.

    The standard error is the larger of the harness's (of the observed accuracy) and that of
    a guesser at chance on as many documents, sqrt(c(1-c)/n): on a handful of documents an
    accuracy of 0 or 1 has a harness stderr of 0, which alone would call any score signal.
    """
    if score is None or stderr is None or documents == 0:
        return True
    floor = math.sqrt(chance * (1 - chance) / documents)
    return abs(score - chance) <= CHANCE_SIGMAS * max(stderr, floor)


def summarise(name: str, out: dict, limit: int | None, mirror: Path | None) -> dict:
    """One task's figures from the harness's output."""
    task = TASKS[name]
    metrics = out["results"][name]
    samples = out["samples"][name]
    counts = out.get("n-samples", {}).get(name, {})
    # Multiple choice: one request per choice. lambada (one word out of the vocabulary): chance 0.
    multiple = out["configs"][name].get("output_type") == "multiple_choice"
    chance = sum(1.0 / len(s["arguments"]) for s in samples) / len(samples) if multiple and samples else 0.0
    result = {"dataset": f"{task.hub_id} ({task.config or 'no config'}, {task.split})",
              "source": "mirror" if mirror is not None else "hub", "documents": len(samples),
              "documents_available": counts.get("original", len(samples)),
              "acc": _number(metrics.get("acc,none")), "acc_stderr": _number(metrics.get("acc_stderr,none")),
              "chance": round(chance, 6), "task_version": out.get("versions", {}).get(name)}
    result["partial"] = bool(limit) and result["documents"] < result["documents_available"]
    result["near_chance"] = near_chance(result["acc"], result["acc_stderr"], chance, len(samples))
    if "acc_norm,none" in metrics:
        result["acc_norm"] = _number(metrics["acc_norm,none"])
        result["acc_norm_stderr"] = _number(metrics.get("acc_norm_stderr,none"))
        result["acc_norm_near_chance"] = near_chance(result["acc_norm"], result["acc_norm_stderr"], chance,
                                                     len(samples))
    if "perplexity,none" in metrics:
        result["perplexity"] = _number(metrics["perplexity,none"])
        result["perplexity_stderr"] = _number(metrics.get("perplexity_stderr,none"))
    return result


def headline(zero_shot: dict | None) -> dict:
    """Per-task accuracies for a manifest's figures."""
    tasks = (zero_shot or {}).get("tasks", {})
    return {f"zeroshot_{name}_acc": r["acc"] for name, r in tasks.items() if r.get("acc") is not None}


def report_lines(zero_shot: dict | None) -> list[str]:
    """The zero-shot section of a stage's report.md."""
    if not zero_shot:
        return []
    lines = ["", f"## Zero-shot tasks (lm-evaluation-harness {zero_shot['harness_version']}, its own task "
                 "definitions, 0 shots)", "",
             "| task | documents | acc | acc_norm | chance | signal? |", "|---|---|---|---|---|---|"]
    for name, r in zero_shot["tasks"].items():
        norm = f"{r['acc_norm']:.4f} ± {r['acc_norm_stderr'] or 0:.4f}" if "acc_norm" in r else "-"
        verdict = "within 2 stderr of chance" if r["near_chance"] else "above chance" if r["acc"] > r["chance"] else "below chance"
        lines.append(f"| {name} | {r['documents']}{' (partial)' if r['partial'] else ''} | "
                     f"{r['acc']:.4f} ± {r['acc_stderr'] or 0:.4f} | {norm} | {r['chance']:.3f} | {verdict} |")
    return lines
