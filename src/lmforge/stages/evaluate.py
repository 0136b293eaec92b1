"""Step 6: evaluate a pretrained model: WikiText-2 perplexity, BoolQ, generations.

Protocols are lm-evaluation-harness 0.4's, so the numbers compare with the harness:
- WikiText-2 (document-level test split, 62 articles): the harness's detokeniser,
  disjoint rolling windows of the model's context length with a BOS prefix for the
  first, corpus-level sums -> word_perplexity, byte_perplexity, bits_per_byte (words
  and bytes of the original text) and token_perplexity (reference only).
- BoolQ (validation, 3,270 questions), zero-shot: "{passage}\\nQuestion: {question}?\\nAnswer:"
  scored with " no" / " yes"; accuracy +- stderr, majority baseline, yes-rate.
- Generations from the config's prompts, greedy and seeded samples.
- Optional zero-shot tasks (`--tasks` or `zero_shot.tasks`: lambada_openai, piqa,
  arc_easy, arc_challenge, hellaswag, winogrande, copa, social_iqa) scored in-process by
  lm-evaluation-harness's own task definitions (lmforge.evaluation.zeroshot), with chance baselines.

Data come from the hub (redirected by LMFORGE_MIRROR / --mirror) or local files.
The model's manifest must record the tokenizer the user names (lineage check).
Outputs: results.json, report.md, generations.jsonl, wikitext_docs.jsonl,
boolq_items.jsonl, manifest.json (last).

example:
  lmforge eval --model_path checkpoints/pretrain/tiny/final \\
      --tokenizer_path data/models/tokenizers/spm_32k \\
      --output_dir evaluation_results/pretrain/tiny
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.config import spec
from lmforge.evaluation.zeroshot import ZeroShotSettings

DEFAULT_CONFIG = "config/evaluation/pretrain_standard.json"
STAGE = "eval"
TABLE_NAMES = ("wikitext_docs.jsonl", "boolq_items.jsonl", "generations.jsonl", "zero_shot_items.jsonl")


# ---------------------------------------------------------------- config

@dataclass
class WikitextSettings:
    enabled: bool = spec(True, help="compute WikiText-2 perplexity")
    hub_id: str = spec("EleutherAI/wikitext_document_level", help="hub dataset (redirected by LMFORGE_MIRROR)")
    hub_config: str = spec("wikitext-2-raw-v1", help="hub dataset config")
    split: str = spec("test", help="hub split")
    field: str = spec("page", help="record field holding one article")
    local_file: str | None = spec(None, help="raw WikiText file of lines, or JSON lines with `page` (instead of the hub)")
    max_docs: int | None = spec(None, min=1, help="cap on articles (result marked partial)")


@dataclass
class BoolQSettings:
    enabled: bool = spec(True, help="compute BoolQ accuracy")
    hub_id: str = spec("aps/super_glue", help="hub dataset (redirected by LMFORGE_MIRROR)")
    hub_config: str = spec("boolq", help="hub dataset config")
    split: str = spec("validation", help="hub split")
    local_file: str | None = spec(None, help="JSON lines, SuperGLUE or original BoolQ schema (instead of the hub)")
    max_examples: int | None = spec(None, min=1, help="cap on questions (result marked partial)")
    prompt_format: str = spec("harness", choices=("harness", "chatml"), help="harness = lm-eval's prompt")


@dataclass
class GenerationConfig:
    enabled: bool = spec(True, help="write generations.jsonl")
    prompts: list[str] = spec(default_factory=list, help="prompts, each generated alone")
    add_bos: bool = spec(True, help="start each prompt with <s>, as every training document starts")
    max_new_tokens: int = spec(64, min=1, max=4096)
    greedy: bool = spec(True, help="one greedy continuation per prompt")
    samples: int = spec(1, min=0, max=100, help="sampled continuations per prompt")
    temperature: float = spec(0.8, min=1e-4, max=10.0)
    top_k: int = spec(50, min=0)
    top_p: float = spec(0.95, min=0.0, max=1.0)
    seed: int = spec(1234, min=0, help="sample k of every prompt uses seed + k")


@dataclass
class RuntimeSettings:
    batch_size: int = spec(8, min=1, max=4096, help="sequences per forward pass")
    max_length: int | None = spec(None, min=2, help="context length for scoring (WikiText windows, BoolQ "
                                  "truncation); null = the model's max_position_embeddings, as the harness")
    device: str = spec("auto", help="auto (GPU if present), cpu, cuda, cuda:N")
    dtype: str = spec("auto", choices=("auto", "float32", "bfloat16", "float16"), help="auto = bf16 on GPU, fp32 on CPU")


@dataclass
class ExpectedRanges:
    """The plan's reference ranges, printed beside the obtained values (never enforced)."""

    wikitext_word_perplexity: list[float] = spec(default_factory=lambda: [45.0, 70.0])
    boolq_accuracy: list[float] = spec(default_factory=lambda: [0.58, 0.68])

    def check(self) -> list[str]:
        return [f"{name}: expected [low, high] with low <= high, got {value}"
                for name, value in self.__dict__.items() if len(value) != 2 or value[0] > value[1]]


@dataclass
class EvalConfig:
    """Settings of `lmforge eval` (config/evaluation/pretrain_standard.json)."""

    wikitext: WikitextSettings = field(default_factory=WikitextSettings)
    boolq: BoolQSettings = field(default_factory=BoolQSettings)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    expected: ExpectedRanges = field(default_factory=ExpectedRanges)
    zero_shot: ZeroShotSettings = field(default_factory=ZeroShotSettings)


# ---------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model_path", "--model-path", dest="model_path", required=True,
                        help="model directory (step_N/ or final/ from `lmforge pretrain`)")
    parser.add_argument("--tokenizer_path", "--tokenizer-path", dest="tokenizer_path", required=True,
                        help="tokenizer directory; must be the one the model was trained with")
    parser.add_argument("--output_dir", "--output-dir", dest="output_dir", required=True,
                        help="where results.json, report.md, generations.jsonl and manifest.json go")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"evaluation config (default: {DEFAULT_CONFIG})")
    parser.add_argument("--wikitext-file", help="local WikiText: raw file of lines, or JSON lines with `page`")
    parser.add_argument("--boolq-file", help="local BoolQ JSON lines (SuperGLUE or original schema)")
    parser.add_argument("--max-wikitext-docs", type=int, help="evaluate only the first N articles (partial)")
    parser.add_argument("--max-boolq", type=int, help="evaluate only the first N questions (partial)")
    parser.add_argument("--batch-size", type=int, help="sequences per forward pass")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--mirror", help="local hub mirror directory (default: $LMFORGE_MIRROR)")
    parser.add_argument("--tasks", help="zero-shot tasks run by lm-evaluation-harness, comma-separated, e.g. "
                        "lambada_openai,piqa,arc_easy,arc_challenge,hellaswag,winogrande,copa,social_iqa "
                        "(needs pip install 'lmforge[eval]'; overrides zero_shot.tasks)")
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="override a config value, e.g. --set generation.enabled=false (repeatable)")
    parser.add_argument("--force", action="store_true", help="redo even if results are up to date")


def resolve_config_path(path: str) -> Path:
    """The config path as given; the default also resolves against the project root
    so `lmforge eval` works from any directory of a checkout."""
    given = Path(path)
    if given.is_file() or given.is_absolute() or path != DEFAULT_CONFIG:
        return given
    project = Path(__file__).resolve().parents[3] / path
    return project if project.is_file() else given


def build_config(args: argparse.Namespace) -> EvalConfig:
    from lmforge.config import load_config, parse_set_overrides
    from lmforge.evaluation.zeroshot import apply_tasks_flag

    overrides = parse_set_overrides(getattr(args, "overrides", None))
    flags = {
        "wikitext.local_file": args.wikitext_file,
        "boolq.local_file": args.boolq_file,
        "wikitext.max_docs": args.max_wikitext_docs,
        "boolq.max_examples": args.max_boolq,
        "runtime.batch_size": args.batch_size,
        "runtime.device": args.device,
    }
    overrides.update({k: v for k, v in flags.items() if v is not None})
    apply_tasks_flag(overrides, getattr(args, "tasks", None))
    return load_config(resolve_config_path(args.config), EvalConfig, overrides)


def describe(args: argparse.Namespace) -> dict[str, str]:
    """What this invocation will evaluate, without loading the model."""
    cfg = build_config(args)
    info = {"model": args.model_path, "tokenizer": args.tokenizer_path}
    if cfg.wikitext.enabled:
        src = cfg.wikitext.local_file or f"{cfg.wikitext.hub_id}/{cfg.wikitext.hub_config}/{cfg.wikitext.split}"
        info["wikitext"] = f"{src}, {cfg.wikitext.max_docs or 'all'} documents"
    if cfg.boolq.enabled:
        src = cfg.boolq.local_file or f"{cfg.boolq.hub_id}/{cfg.boolq.hub_config}/{cfg.boolq.split}"
        info["boolq"] = f"{src}, {cfg.boolq.max_examples or 'all'} questions, prompt {cfg.boolq.prompt_format}"
    if cfg.generation.enabled:
        per = int(cfg.generation.greedy) + cfg.generation.samples
        info["generations"] = f"{len(cfg.generation.prompts)} prompts x {per}, {cfg.generation.max_new_tokens} new tokens"
    if cfg.zero_shot.tasks:
        info["zero_shot"] = ", ".join(cfg.zero_shot.tasks) + f" (lm-evaluation-harness, {cfg.zero_shot.limit or 'all'} docs each)"
    return info


def main(args: argparse.Namespace) -> int:
    from lmforge.artifacts import is_up_to_date, prepare_output_dir
    from lmforge.config import to_dict
    from lmforge.log import get_logger

    log = get_logger(__name__)
    from lmforge.data.sources import resolve_mirror
    from lmforge.evaluation.zeroshot import preflight

    cfg = build_config(args)
    preflight(cfg.zero_shot, resolve_mirror(args.mirror))  # harness installed, task data present: before anything
    config_dict = {**to_dict(cfg), "_data": data_identity(cfg, args.mirror)}
    if not cfg.zero_shot.tasks:
        config_dict.pop("zero_shot")  # as before the suite existed: results computed then stay up to date
    inputs = {"model": args.model_path, "tokenizer": args.tokenizer_path}
    if not args.force and is_up_to_date(args.output_dir, STAGE, config_dict, inputs):
        log.info("%s: up to date, skipping (use --force to redo)", args.output_dir)
        return 0
    from lmforge.model.loading import load_for_eval

    loaded = load_for_eval(args.model_path, args.tokenizer_path, device=cfg.runtime.device,
                           dtype=cfg.runtime.dtype, max_length=cfg.runtime.max_length)
    out = prepare_output_dir(args.output_dir)
    run = EvalRun(cfg, loaded, out, mirror=args.mirror)
    results = run.execute()
    run.write(results, config_dict, inputs, model_path=args.model_path, tokenizer_path=args.tokenizer_path)
    print(closing_summary(results, out))
    return 0


def data_identity(cfg: EvalConfig, mirror: str | None) -> dict:
    """What the data were (mirror files or local files), so that a run on other data is
    never mistaken for up to date."""
    from lmforge.data.sources import data_fingerprint, resolve_mirror
    from lmforge.evaluation.zeroshot import data_identity as zero_shot_identity

    found = {name: data_fingerprint(hub=(s.hub_id, s.hub_config, s.split), files=s.local_file, mirror=mirror)
             for name, s in (("wikitext", cfg.wikitext), ("boolq", cfg.boolq)) if s.enabled}
    if cfg.zero_shot.tasks:
        found["zero_shot"] = zero_shot_identity(cfg.zero_shot.tasks, resolve_mirror(mirror))
    return found


# ---------------------------------------------------------------- the run

class EvalRun:
    """One evaluation: each part fills `results`; `write` saves everything, manifest last."""

    def __init__(self, cfg: EvalConfig, loaded, out: Path, mirror: str | None = None):
        from lmforge.log import get_logger

        self.cfg, self.loaded, self.out, self.mirror = cfg, loaded, out, mirror
        self.log = get_logger(__name__)
        self.outputs: list[str] = []
        self.tables: dict[str, list[dict]] = {}

    def execute(self) -> dict:
        start = time.time()
        results: dict = {"stage": STAGE}
        if self.cfg.wikitext.enabled:
            results["wikitext"] = self.wikitext()
        if self.cfg.boolq.enabled:
            results["boolq"] = self.boolq()
        if self.cfg.generation.enabled and self.cfg.generation.prompts:
            results["generations"] = self.generations()
        if self.cfg.zero_shot.tasks:
            results["zero_shot"] = self.zero_shot()
        results["partial"] = any(results.get(k, {}).get("partial", False) for k in ("wikitext", "boolq", "zero_shot"))
        results["wall_seconds"] = round(time.time() - start, 2)
        return results

    def wikitext(self) -> dict:
        from lmforge.evaluation.datasets import load_wikitext
        from lmforge.evaluation.loglikelihood import rolling_loglikelihoods
        from lmforge.evaluation.perplexity import CorpusLikelihood, count_bytes, count_words, detokenize_wikitext

        s, m = self.cfg.wikitext, self.loaded
        skips: Counter = Counter()
        start = time.time()
        data = load_wikitext(s.local_file, limit=s.max_docs, mirror=self.mirror, skips=skips,
                             hub=(s.hub_id, s.hub_config, s.split), field=s.field)
        token_lists = [m.encoder.encode(detokenize_wikitext(page)) for page in data.records]
        lls = rolling_loglikelihoods(m.model, token_lists, prefix_token=m.encoder.prefix_id,
                                     max_length=m.max_length, batch_size=self.cfg.runtime.batch_size,
                                     desc="WikiText")
        totals, rows = CorpusLikelihood(), []
        for n, (page, tokens, ll) in enumerate(zip(data.records, token_lists, lls)):
            words, nbytes = count_words(page), count_bytes(page)
            totals.add(ll, len(tokens), words, nbytes)
            rows.append({"doc": n, "title": page.strip().splitlines()[0].strip(" ="), "loglikelihood": ll,
                         "tokens": len(tokens), "words": words, "bytes": nbytes})
        self.tables["wikitext_docs.jsonl"] = rows
        result = {**totals.metrics(), "documents": totals.documents, "tokens": totals.tokens,
                  "words": totals.words, "bytes": totals.bytes, "loglikelihood": totals.loglikelihood,
                  "max_length": m.max_length, "prefix_token_id": m.encoder.prefix_id,
                  "source": data.source, "partial": data.partial, "skipped": dict(skips),
                  "seconds": round(time.time() - start, 2)}
        self.log.info("WikiText: %d documents, %d tokens, word perplexity %.3f%s", totals.documents,
                      totals.tokens, result["word_perplexity"], " (partial)" if data.partial else "")
        return result

    def boolq(self) -> dict:
        from lmforge.evaluation.datasets import load_boolq
        from lmforge.evaluation.boolq import evaluate_boolq

        s, m = self.cfg.boolq, self.loaded
        skips: Counter = Counter()
        start = time.time()
        data = load_boolq(s.local_file, limit=s.max_examples, mirror=self.mirror, skips=skips,
                          hub=(s.hub_id, s.hub_config, s.split))
        result = evaluate_boolq(m.model, m.encoder, data.records, max_length=m.max_length,
                                batch_size=self.cfg.runtime.batch_size, prompt_format=s.prompt_format)
        self.tables["boolq_items.jsonl"] = result.items
        summary = {**result.summary(), "prompt_format": s.prompt_format, "source": data.source,
                   "partial": data.partial, "skipped": dict(skips), "seconds": round(time.time() - start, 2)}
        self.log.info("BoolQ: %d questions, accuracy %.4f +- %.4f (majority %.4f, yes-rate %.4f)%s",
                      result.examples, result.accuracy, result.accuracy_stderr, result.majority_baseline,
                      result.yes_rate, " (partial)" if data.partial else "")
        return summary

    def zero_shot(self) -> dict:
        from lmforge.data.sources import resolve_mirror
        from lmforge.evaluation.zeroshot import run, split_items

        result = run(self.loaded, self.cfg.zero_shot, resolve_mirror(self.mirror), self.cfg.runtime.batch_size)
        self.tables["zero_shot_items.jsonl"] = split_items(result)
        return result

    def generations(self) -> dict:
        from lmforge.evaluation.generation import GenerationSettings, generate_all

        g, enc = self.cfg.generation, self.loaded.encoder
        start = time.time()
        settings = GenerationSettings(max_new_tokens=g.max_new_tokens, greedy=g.greedy, samples=g.samples,
                                      temperature=g.temperature, top_k=g.top_k, top_p=g.top_p, seed=g.seed)
        bos = [enc.bos_id] if g.add_bos and enc.bos_id is not None else []
        records = generate_all(self.loaded.model, lambda p: bos + enc.encode(p), enc.decode, g.prompts, settings,
                               stop_ids=[enc.eos_id], pad_id=enc.pad_id)
        self.tables["generations.jsonl"] = records
        return {"file": "generations.jsonl", "count": len(records), "prompts": len(g.prompts),
                "seconds": round(time.time() - start, 2)}

    def write(self, results: dict, config_dict: dict, inputs: dict, *, model_path: str, tokenizer_path: str) -> None:
        from lmforge.artifacts import atomic_open, atomic_write_json, atomic_write_text, write_manifest
        from lmforge.log import peak_rss_mb

        m = self.loaded
        results.update({
            "model_path": str(model_path), "tokenizer_path": str(tokenizer_path),
            "tokenizer_sha256": m.tokenizer_sha256, "device": m.device, "dtype": m.dtype,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "expected": config_dict["expected"],
            "config": config_dict,
        })
        # Tables of a previous run that this run did not produce would be stale: remove them.
        for name in TABLE_NAMES:
            if name not in self.tables:
                (self.out / name).unlink(missing_ok=True)
        for name, rows in self.tables.items():
            with atomic_open(self.out / name, "w", encoding="utf-8") as handle:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        atomic_write_json(self.out / "results.json", _json_safe(results))
        atomic_write_text(self.out / "report.md", render_report(results))
        figures = {"wall_seconds": results["wall_seconds"], "peak_rss_mb": round(peak_rss_mb(), 1),
                   "partial": results["partial"], **headline_metrics(results)}
        write_manifest(self.out, STAGE, config=config_dict, inputs=inputs, tokenizer_sha256=m.tokenizer_sha256,
                       outputs=["results.json", "report.md", *self.tables], figures=_json_safe(figures))
        from lmforge.model.card import record_evaluation
        record_evaluation(model_path, STAGE, _json_safe(headline_metrics(results)), results["expected"],
                          (self.out / "results.json").resolve())


def _json_safe(obj):
    """Infinite perplexities (random models) as the string "inf": JSON has no infinity."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def headline_metrics(results: dict) -> dict:
    wt, bq = results.get("wikitext", {}), results.get("boolq", {})
    picked = {"wikitext_word_perplexity": wt.get("word_perplexity"), "wikitext_byte_perplexity": wt.get("byte_perplexity"),
              "wikitext_bits_per_byte": wt.get("bits_per_byte"), "boolq_accuracy": bq.get("accuracy"),
              "boolq_yes_rate": bq.get("yes_rate"), "boolq_majority_baseline": bq.get("majority_baseline")}
    from lmforge.evaluation.zeroshot import headline

    return {**{k: v for k, v in picked.items() if v is not None}, **headline(results.get("zero_shot"))}


# ---------------------------------------------------------------- report

def _verdict(value: float, low: float, high: float) -> str:
    return "within" if low <= value <= high else ("below" if value < low else "above")


def render_report(results: dict) -> str:
    """report.md: obtained values beside the plan's expected ranges, bias made visible."""
    exp = results["expected"]
    wt, bq = results.get("wikitext"), results.get("boolq")
    lines = [f"# Evaluation report: {results['model_path']}", "",
             f"- tokenizer: `{results['tokenizer_path']}` (sha256 `{results['tokenizer_sha256']}`)",
             f"- device: {results['device']} ({results['dtype']}), wall time {results['wall_seconds']:.1f} s",
             f"- finished: {results['finished']}"]
    if results["partial"]:
        lines.append("- **PARTIAL**: evaluation capped (see counts below); not comparable with full-set figures")
    lines += ["", "| Metric | Expected (plan) | Obtained | |", "|---|---|---|---|"]
    if wt:
        lo, hi = exp["wikitext_word_perplexity"]
        lines.append(f"| WikiText-2 word perplexity | {lo:g}-{hi:g} | {wt['word_perplexity']:.2f} | "
                     f"{_verdict(wt['word_perplexity'], lo, hi)} |")
    if bq:
        lo, hi = exp["boolq_accuracy"]
        lines.append(f"| BoolQ accuracy | {lo:.0%}-{hi:.0%} | {bq['accuracy']:.2%} ± {bq['accuracy_stderr']:.2%} | "
                     f"{_verdict(bq['accuracy'], lo, hi)} |")
    if wt:
        lines += ["", "## WikiText-2 (lm-evaluation-harness protocol)", "",
                  f"- documents: {wt['documents']}{' (partial)' if wt['partial'] else ''}; source: {wt['source']}",
                  f"- word perplexity {wt['word_perplexity']:.4f}, byte perplexity {wt['byte_perplexity']:.4f}, "
                  f"bits per byte {wt['bits_per_byte']:.4f}, token perplexity {wt['token_perplexity']:.4f}",
                  f"- {wt['words']:,} words, {wt['bytes']:,} bytes (original text), {wt['tokens']:,} tokens; "
                  f"rolling windows of {wt['max_length']} tokens, first prefixed by token {wt['prefix_token_id']}"]
    if bq:
        lines += ["", "## BoolQ (zero-shot, prompt: " + bq["prompt_format"] + ")", "",
                  f"- questions: {bq['examples']}{' (partial)' if bq['partial'] else ''}; source: {bq['source']}",
                  f"- accuracy {bq['accuracy']:.4f} ± {bq['accuracy_stderr']:.4f}",
                  f"- majority-class baseline {bq['majority_baseline']:.4f} (gold yes-rate {bq['gold_yes_rate']:.4f})",
                  f"- model yes-rate {bq['yes_rate']:.4f}", "", bias_note(bq)]
    from lmforge.evaluation.zeroshot import report_lines

    lines += report_lines(results.get("zero_shot"))
    gen = results.get("generations")
    if gen:
        lines += ["", "## Generations", "", f"- {gen['count']} generations from {gen['prompts']} prompts: `generations.jsonl`"]
    return "\n".join(lines) + "\n"


def bias_note(bq: dict) -> str:
    """One sentence on whether BoolQ measured reading or a yes/no bias."""
    yes = bq["yes_rate"]
    if yes >= 0.95 or yes <= 0.05:
        side = "yes" if yes >= 0.95 else "no"
        return (f"**Note:** the model answers \"{side}\" to {max(yes, 1 - yes):.0%} of questions: this accuracy "
                "measures a fixed answer bias, not reading comprehension.")
    margin = bq["accuracy"] - bq["majority_baseline"]
    return (f"Accuracy is {margin * 100:+.1f} points from always answering the majority class; "
            "below or near zero means BoolQ mostly measures the model's yes/no bias.")


def closing_summary(results: dict, out: Path) -> str:
    lines = ["✅ Evaluation complete!" + (" (PARTIAL: capped)" if results["partial"] else "")]
    exp = results["expected"]
    if "wikitext" in results:
        wt, (lo, hi) = results["wikitext"], exp["wikitext_word_perplexity"]
        lines.append(f"   📉 WikiText-2 perplexity: {wt['word_perplexity']:.2f} (expected {lo:g}-{hi:g}; "
                     f"{wt['documents']} documents)")
    if "boolq" in results:
        bq, (lo, hi) = results["boolq"], exp["boolq_accuracy"]
        lines.append(f"   🎯 BoolQ accuracy: {bq['accuracy']:.2%} ± {bq['accuracy_stderr']:.2%} (expected "
                     f"{lo:.0%}-{hi:.0%}; majority {bq['majority_baseline']:.2%}, yes-rate {bq['yes_rate']:.2%})")
    if "generations" in results:
        lines.append(f"   💬 Generations: {results['generations']['count']} -> {out / 'generations.jsonl'}")
    for name, r in (results.get("zero_shot") or {}).get("tasks", {}).items():
        lines.append(f"   🧩 {name}: acc {r['acc']:.2%} ± {r['acc_stderr'] or 0:.2%} (chance {r['chance']:.0%})"
                     + (" — within 2 stderr of chance" if r["near_chance"] else ""))
    lines.append(f"   ⏱️  Duration: {results['wall_seconds']:.1f} s")
    lines.append(f"   📁 Results: {out / 'results.json'}, {out / 'report.md'}")
    return "\n".join(lines)
