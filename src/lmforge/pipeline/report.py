"""Write REPORT.md for a pipeline run directory: figures, timings, metrics, plots, lineage.

    lmforge report runs/quickstart

Reads what the run left behind and nothing else: `pipeline_run.json` (the runner's
per-stage status and wall times), each stage's manifest.json (its figures), the
evaluation `results.json` files and the training `metrics.jsonl` files. It writes
`REPORT.md` with the plan's reference tables (expected and obtained side by side, with
caveats: derived data, degenerate classifiers, format-only scores, unlike hardware), PNG plots of loss, learning rate and throughput (`plots/`), the tokenizer
lineage table and the machine. Run it again at any time; it is rebuilt from scratch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Iterable

from lmforge.artifacts import atomic_path, atomic_write_text
from lmforge.errors import ArtifactError
from lmforge.evaluation.datasets import DERIVED_PREFIX, is_derived
from lmforge.evaluation.report_table import evaluation_section
from lmforge.pipeline import verify
from lmforge.pipeline.run_record import RUN_FILE
from lmforge.pipeline.verify import find_artifacts

REPORT = "REPORT.md"
PLOTS = "plots"
# Key spellings the stages use for the same quantity; the first one found wins.
LOSS_KEYS = ("loss", "train_loss")
VAL_LOSS_KEYS = ("val_loss", "eval_loss")
LR_KEYS = ("lr", "learning_rate")
THROUGHPUT_KEYS = ("tok_per_s", "tokens_per_sec", "tokens_per_s", "tok_s", "throughput")
STEP_KEYS = ("step", "global_step")

# The plan's "Métriques de Référence": (label, expected, where to look, how to show it).
PRETRAIN_METRICS = [
    ("Final Loss", "2.8-3.2", "pretrain", ("final_loss", "final_train_loss", "train_loss", "loss"), "{:.3f}"),
    ("WikiText-2 PPL", "45-70", "eval", ("word_perplexity",), "{:.1f}"),
    ("BoolQ Accuracy", "58-68%", "eval", ("boolq.accuracy", "boolq.acc", "boolq_accuracy"), "{:.1%}"),
    ("Tokens/sec (4090)", "~600-800", "pretrain", ("tokens_per_sec", "tok_per_s", "throughput_tok_s"), "{:,.0f}"),
    ("VRAM (BF16)", "~8-12 GB", "pretrain", ("peak_vram_gb", "peak_gpu_memory_gb", "vram_gb"), "{:.2f} GB"),
]
SFT_METRICS = [
    ("Final Loss", "1.5-2.0", "sft", ("final_loss", "final_train_loss", "train_loss", "loss"), "{:.3f}"),
    ("SFT Perplexity", "35-50", "eval-sft", ("sft_perplexity", "perplexity"), "{:.1f}"),
    ("BoolQ Accuracy", "68-75%", "eval-sft", ("boolq.accuracy", "boolq.acc", "boolq_accuracy"), "{:.1%}"),
    ("Smoke Quality", "0.65-0.80", "eval-sft", ("smoke_quality", "quality_score", "smoke.quality", "quality"),
     "{:.2f}"),
    ("VRAM (LoRA)", "~6-8 GB", "sft", ("peak_vram_gb", "peak_gpu_memory_gb", "vram_gb"), "{:.2f} GB"),
]


# ---------------------------------------------------------------- finding things

def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def find_value(obj: Any, dotted_keys: Iterable[str]) -> Any:
    """The first number found for any of `dotted_keys`, searched at any depth ('boolq.accuracy'
    matches a key 'accuracy' inside any mapping reached through a key containing 'boolq')."""
    for dotted in dotted_keys:
        *parents, leaf = dotted.split(".")
        found = _search(obj, parents, leaf)
        if found is not None:
            return found
    return None


def _search(obj: Any, parents: list[str], leaf: str, matched: int = 0) -> Any:
    if isinstance(obj, dict):
        if matched == len(parents) and isinstance(obj.get(leaf), (int, float)) and not isinstance(obj.get(leaf), bool):
            return obj[leaf]
        for key, value in obj.items():
            step = matched + (matched < len(parents) and parents[matched] in str(key).lower())
            hit = _search(value, parents, leaf, step)
            if hit is not None:
                return hit
    return None


def stage_artifacts(run_dir: Path, record: dict) -> dict[str, list[tuple[Path, dict]]]:
    """Manifests by stage name: the runner's recorded outputs, else everything under run_dir."""

    roots = [Path(e["output"]) for e in record.get("stages", {}).values() if e.get("output")]
    roots = [p for p in roots if p.exists()] or [run_dir]
    by_stage: dict[str, list[tuple[Path, dict]]] = {}
    for path, manifest in find_artifacts(roots):
        by_stage.setdefault(str(manifest["stage"]), []).append((path, manifest))
    return by_stage


def _best(artifacts: list[tuple[Path, dict]], root: Path | None = None) -> tuple[Path, dict] | None:
    """A stage's main artifact: the one at `root` itself, else a `final/` model, else the last listed."""
    if not artifacts:
        return None
    if root is not None:
        for artifact in artifacts:
            if artifact[0].resolve() == root.resolve():
                return artifact
    finals = [a for a in artifacts if a[0].name == "final"]
    return (finals or artifacts)[-1]


def stage_values(path: Path, manifest: dict) -> dict:
    """Everything a metric may be read from: the manifest and any results/metrics JSON beside it."""
    merged: dict = {"figures": manifest.get("figures", {}), "manifest": manifest}
    for name in ("results.json", "metrics.json"):
        data = _read_json(path / name)
        if isinstance(data, dict):
            merged[name] = data
    return merged


def metrics_files(run_dir: Path, by_stage: dict) -> dict[str, Path]:
    """Training metrics.jsonl files, labelled by stage (searched under each training output)."""
    found: dict[str, Path] = {}
    for stage in ("pretrain", "sft"):
        for path, _ in by_stage.get(stage, []):
            for candidate in [path, path.parent, path.parent.parent]:
                hits = sorted(candidate.glob("metrics.jsonl")) + sorted(candidate.glob("*/metrics.jsonl"))
                if hits:
                    found.setdefault(stage, hits[0])
                    break
    return found


def read_metrics(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _series(rows: list[dict], keys: tuple[str, ...]) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for n, row in enumerate(rows):
        key = next((k for k in keys if isinstance(row.get(k), (int, float))), None)
        if key is None:
            continue
        step = next((row[k] for k in STEP_KEYS if isinstance(row.get(k), (int, float))), n)
        xs.append(step)
        ys.append(float(row[key]))
    return xs, ys


# ---------------------------------------------------------------- plots

def expected_range(text: str) -> tuple[float, float] | None:
    """'2.8-3.2' or '~600-800' -> (low, high); None when the plan gives no range."""
    import re

    match = re.search(r"([\d.]+)\s*-\s*([\d.]+)", text.replace(",", ""))
    return (float(match.group(1)), float(match.group(2))) if match else None


def _tokens_axis(rows: list[dict]) -> dict[float, float]:
    """step -> tokens seen, from the training rows (evaluation rows record only the step)."""
    return {row["step"]: float(row["tokens"]) for row in rows
            if isinstance(row.get("step"), (int, float)) and isinstance(row.get("tokens"), (int, float))}


def _at_tokens(steps: list[float], axis: dict[float, float]) -> list[float] | None:
    """Tokens seen at each step (linear between logged steps: every step has the same batch)."""
    if not axis:
        return None
    known = sorted(axis.items())
    per_step = known[-1][1] / known[-1][0] if known[-1][0] else 0.0
    return [axis.get(s, s * per_step) for s in steps]


def plot_metrics(rows: list[dict], label: str, out_dir: Path, *, loss_range: tuple[float, float] | None = None,
                 throughput_range: tuple[float, float] | None = None) -> list[Path]:
    """PNGs: loss against tokens seen (validation points, the plan's expected final range),
    learning rate, gradient norm and throughput (from 0) against steps; only those with data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axis = _tokens_axis(rows)
    specs = [("loss", "loss", [("train", LOSS_KEYS), ("validation", VAL_LOSS_KEYS)], loss_range, "plan: final loss"),
             ("lr", "learning rate", [("lr", LR_KEYS)], None, ""),
             ("grad_norm", "gradient norm (before clipping)", [("grad norm", ("grad_norm",))], None, ""),
             ("throughput", "tokens / s", [("tok/s", THROUGHPUT_KEYS)], throughput_range, "plan: RTX 4090")]
    written = []
    for name, ylabel, lines, band, band_label in specs:
        curves = [(legend, *_series(rows, keys)) for legend, keys in lines]
        curves = [c for c in curves if c[1]]
        if not curves:
            continue
        by_tokens = name == "loss" and bool(axis)
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        for legend, xs, ys in curves:
            xs = _at_tokens(xs, axis) if by_tokens else xs
            if legend == "validation":     # a few evaluations: points, not a line
                ax.plot(xs, ys, linestyle="none", marker="D", markersize=5, label=legend)
            else:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=legend)
        if band is not None:
            ax.axhspan(*band, color="tab:green", alpha=0.15, label=band_label)
        ax.set_xlabel("tokens seen" if by_tokens else "step")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{label}: {ylabel}")
        ax.grid(alpha=0.3)
        if name == "throughput":
            ax.set_ylim(bottom=0)       # a rate axis cut above 0 exaggerates every wiggle
        if len(curves) > 1 or band is not None:
            ax.legend()
        fig.tight_layout()
        path = out_dir / f"{label}_{name}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        written.append(path)
    return written


# ---------------------------------------------------------------- sections

def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _short_figures(figures: dict, limit: int = 6) -> str:
    items = [(k, v) for k, v in figures.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    parts = []
    for key, value in items[:limit]:
        if isinstance(value, float):
            value = f"{value:.4g}"
        parts.append(f"{key}={value}")
    return ", ".join(parts)


def stages_section(record: dict, by_stage: dict) -> list[str]:
    lines = ["## Stages", "", "| # | stage | verb | status | wall time (last run) | CPU time | figures |",
             "|---|---|---|---|---|---|---|"]
    entries = sorted(record.get("stages", {}).items(), key=lambda kv: kv[1].get("index", 0))
    total = 0.0
    for name, entry in entries:
        output = Path(entry["output"]) if entry.get("output") else None
        figures = ""
        if output is not None:
            try:
                best = _best(find_artifacts([output]), output) if output.exists() else None
            except ArtifactError:
                best = None
            figures = _short_figures(best[1].get("figures", {})) if best else ""
        ran = entry.get("ran_wall_s")
        total += ran or 0.0
        status = entry.get("status", "")
        if status == "failed":
            status = f"**failed** (exit {entry.get('exit_code')}, log `{entry.get('log')}`)"
        lines.append(f"| {entry.get('index', '')} | {name} | {entry.get('verb', '')} | {status} | "
                     f"{_fmt_seconds(ran)} | {_fmt_seconds(entry.get('ran_cpu_s'))} | {figures} |")
    if not entries:
        lines.append("| | (no pipeline_run.json: stages found by their manifests) | | | | | |")
        for stage, arts in by_stage.items():
            best = _best(arts)
            lines.append(f"| | {stage} | | | | | {_short_figures(best[1].get('figures', {})) if best else ''} |")
    lines += ["", f"Total wall time of the last real run of each stage: {_fmt_seconds(total)}.", ""]
    return lines


def shown(path: Path, run_dir: Path) -> str:
    """A path as the report shows it: relative to the run directory when inside it."""
    try:
        return path.resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return str(path)


def _from_metrics(label: str, rows: list[dict], source: str) -> tuple[float | None, str]:
    """Fallbacks read from metrics.jsonl: the last logged loss, the median throughput."""
    if label == "Final Loss":
        _, ys = _series(rows, LOSS_KEYS)
        return (ys[-1], "metrics.jsonl (last logged loss)") if ys else (None, source)
    if label.startswith("Tokens/sec"):
        _, ys = _series(rows, THROUGHPUT_KEYS)
        if ys:
            import statistics
            return statistics.median(ys), f"metrics.jsonl (median of {len(ys)} logged values, this machine)"
    return None, source


def metrics_section(by_stage: dict, metric_rows: dict[str, list[dict]], run_dir: Path) -> list[str]:
    lines = ["## Reference metrics", "",
             "The plan's reference tables (its French column names kept). Expected values are the plan's, for the",
             "23M model on 600M tokens (RTX 4090); a quickstart or a scaled-down run is orders of magnitude smaller,",
             "so its values are not expected to fall in range. Caveats are written beside the value they concern.", ""]
    device = training_device(by_stage)
    for title, table in (("Pretraining", PRETRAIN_METRICS), ("SFT", SFT_METRICS)):
        lines += [f"### {title}", "", "| Métrique | Attendu | Obtenu | source |", "|---|---|---|---|"]
        notes: list[str] = []
        for label, expected, stage, keys, fmt in table:
            value, source, values = None, "-", {}
            best = _best(by_stage.get(stage, []))
            if best is not None:
                values = stage_values(*best)
                value = find_value(values, keys)
                source = f"`{shown(best[0], run_dir)}`"
            if value is None and stage in metric_rows:
                value, source = _from_metrics(label, metric_rows[stage], source)
            obtained = fmt.format(value) if value is not None else "n/a"
            if value is not None:
                tag, note = caveat(label, values, by_stage, device)
                obtained += f" ({tag})" if tag else ""
                notes += [f"- **{label}**: {note}"] if note else []
            lines.append(f"| {label} | {expected} | {obtained} | {source} |")
        lines += [""] + (notes + [""] if notes else [])
    return lines


# ---------------------------------------------------------------- caveats: what a bare number would overstate

def caveat(label: str, values: dict, by_stage: dict, device: str) -> tuple[str, str]:
    """(short tag for the table cell, sentence for the notes) when a value needs one."""
    results = values.get("results.json") or {}
    fingerprints = ((values.get("manifest") or {}).get("config") or {}).get("_data") or {}
    if label == "WikiText-2 PPL":
        source = (results.get("wikitext") or {}).get("source")
        return _derived_caveat(_derived_fingerprint(fingerprints.get("wikitext")) or source, "a WikiText-2 figure")
    if label == "BoolQ Accuracy":
        boolq = results.get("boolq") or {}
        tag, note = _derived_caveat(_derived_fingerprint(fingerprints.get("boolq")) or boolq.get("source"),
                                    "a BoolQ figure")
        dtag, dnote = degenerate_classifier(boolq)
        return "; ".join(t for t in (tag, dtag) if t), " ".join(n for n in (note, dnote) if n)
    if label == "SFT Perplexity":
        return _derived_caveat(_sft_data_source(results, by_stage), "a perplexity on the real Alpaca/OASST1 sets")
    if label == "Smoke Quality":
        return smoke_caveat(results.get("smoke") or {})
    if label.startswith("Tokens/sec"):
        if "4090" in device:
            return "", ""
        return (f"{device}: not comparable",
                f"measured on {device}; the plan's ~600-800 is for an RTX 4090 (and its own model and batch), "
                "so the two numbers cannot be compared.")
    return "", ""


def _derived_caveat(source: str | None, real: str) -> tuple[str, str]:

    if not is_derived(source):
        return "", ""
    return "derived data", f"measured on {source}, so it is not {real}."


def degenerate_classifier(boolq: dict) -> tuple[str, str]:
    """A yes/no classifier that always says one thing, or does no better than the majority class."""
    acc, yes = boolq.get("accuracy"), boolq.get("yes_rate")
    base, err = boolq.get("majority_baseline"), boolq.get("accuracy_stderr")
    if isinstance(yes, (int, float)) and yes in (0, 0.0, 1, 1.0):
        answer = "yes" if yes else "no"
        return (f"degenerate: always '{answer}'",
                f"The model answered '{answer}' to every question (yes-rate {yes:.0%}); the accuracy is the share "
                f"of '{answer}' answers in the data, not reading comprehension.")
    if all(isinstance(v, (int, float)) for v in (acc, base, err)) and abs(acc - base) <= err:
        return ("≈ majority baseline",
                f"Accuracy {acc:.1%} is within one standard error ({err:.1%}) of always answering the majority "
                f"class ({base:.1%}): no evidence the model does better than that.")
    return "", ""


def smoke_caveat(smoke: dict) -> tuple[str, str]:
    """The quality score is mostly format rules; say so, and show the content rules apart."""
    rates = smoke.get("rule_pass_rates") or {}
    content = {k: v for k, v in rates.items() if k.startswith(("keyword", "regex"))}
    detail = ", ".join(f"{k} {v:.2f}" for k, v in content.items())
    note = ("the score averages format rules (stops on <|im_end|>, no role leakage, not empty, no repetition) "
            "with the few content rules; fluent nonsense passes the format rules. "
            + (f"Content rules alone: {detail}." if detail else "No case has a content rule."))
    return "format-only", note


def _sft_data_source(results: dict, by_stage: dict) -> str | None:
    """The SFT validation data were derived when any sft-data set read a derived mirror."""
    for _, manifest in by_stage.get("sft-data", []):
        found = _derived_fingerprint(((manifest.get("config") or {}).get("_data")))
        if found:
            return found
    return None


def _derived_fingerprint(fingerprint: dict | None) -> str | None:
    """A stage's data fingerprint (lmforge.data.sources.data_fingerprint) names the mirror files
    it read; files under a quickstart-data output (its DERIVED.json, or its manifest for
    runs made before the marker existed) are derived data."""

    for path in (fingerprint or {}).get("mirror_files") or {}:
        for parent in Path(path).parents:
            manifest = _read_json(parent / "manifest.json") if (parent / "manifest.json").is_file() else None
            if (parent / "DERIVED.json").is_file() or (isinstance(manifest, dict)
                                                       and manifest.get("stage") == "quickstart-data"):
                hub = (fingerprint or {}).get("hub") or ["?"]
                return (f"{DERIVED_PREFIX}: files generated by lmforge quickstart-data under {parent}, "
                        f"in the place of {hub[0]}")
    return None


def training_device(by_stage: dict) -> str:
    """Where the run's models were evaluated (the eval results record it), else this machine."""
    for stage in ("eval", "eval-sft"):
        best = _best(by_stage.get(stage, []))
        device = ((stage_values(*best).get("results.json") or {}).get("device") if best else None)
        if device:
            return _device_name(str(device))
    return _device_name("cuda" if _cuda() else "cpu")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _device_name(device: str) -> str:
    if device.startswith("cuda") and _cuda():
        import torch

        return torch.cuda.get_device_name(0)
    return "CPU" if device.startswith("cpu") else device


def machine_section() -> list[str]:
    lines = ["## Machine", "", f"- platform: {platform.platform()}", f"- python: {platform.python_version()}",
             f"- CPU cores: {os.cpu_count()}"]
    try:
        import torch

        lines.append(f"- torch: {torch.__version__}")
        if torch.cuda.is_available():
            lines.append(f"- GPU: {torch.cuda.get_device_name(0)} × {torch.cuda.device_count()}")
        else:
            lines.append("- GPU: none (CPU run)")
    except ImportError:
        pass
    return lines + [""]


# ---------------------------------------------------------------- the report

def build_report(run_dir: Path) -> str:

    record = _read_json(run_dir / RUN_FILE) or {}
    by_stage = stage_artifacts(run_dir, record)
    metric_paths = metrics_files(run_dir, by_stage)
    metric_rows = {stage: read_metrics(path) for stage, path in metric_paths.items()}
    lines = ["# lmforge run report", "",
             f"- run directory: `{run_dir}`", f"- pipeline: `{record.get('pipeline', 'n/a')}`",
             f"- generated: {time.strftime('%Y-%m-%d %H:%M:%S %z')} (`lmforge report {run_dir}` regenerates it)", ""]
    lines += stages_section(record, by_stage)
    lines += metrics_section(by_stage, metric_rows, run_dir)
    lines += evaluation_section(by_stage, run_dir)  # lmforge.evaluation.report_table: all tasks, chance, decontamination
    lines += ["## Training curves", ""]
    plots_dir = run_dir / PLOTS
    device = training_device(by_stage)
    for stage, rows in metric_rows.items():
        table = PRETRAIN_METRICS if stage == "pretrain" else SFT_METRICS
        expected = {label: text for label, text, *_ in table}
        written = plot_metrics(rows, stage, plots_dir, loss_range=expected_range(expected["Final Loss"]),
                               throughput_range=expected_range(expected.get("Tokens/sec (4090)", ""))
                               if "4090" in device else None)
        lines.append(f"{stage}: {len(rows)} logged points from `{shown(metric_paths[stage], run_dir)}`")
        lines += [""] + [f"![{p.stem}]({p.relative_to(run_dir).as_posix()})" for p in written] + [""]
    if not metric_rows:
        lines += ["No metrics.jsonl found.", ""]
    lines += ["## Tokenizer lineage", ""]
    roots = [Path(e["output"]) for e in record.get("stages", {}).values() if e.get("output")]
    roots = [p for p in roots if p.exists()] or [run_dir]
    lines += [verify.markdown_table(verify.verify_paths(roots)), ""]
    return "\n".join(lines + machine_section())


def write_report(run_dir: str | Path) -> Path:
    """Rebuild `<run_dir>/REPORT.md` (and its plots); return its path."""

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ArtifactError(f"run directory {run_dir} does not exist")
    path = run_dir / REPORT
    atomic_write_text(path, build_report(run_dir))
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a pipeline run directory (holds pipeline_run.json)")


def main(args: argparse.Namespace) -> int:
    path = write_report(args.run_dir)
    print(f"📝 Report written: {path}")
    return 0
