"""The pretraining evaluation suite (`lmforge eval`): WikiText-2 perplexity, BoolQ, optional
zero-shot tasks and generations on one loaded model; results.json, report.md, per-item tables
and the manifest, written last. The stage that plans and drives it is `lmforge.stages.evaluate`.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from lmforge.artifacts import atomic_open, atomic_write_json, atomic_write_text, write_manifest
from lmforge.data.sources import resolve_mirror
from lmforge.evaluation.boolq import evaluate_boolq
from lmforge.evaluation.config import EvalConfig, json_safe
from lmforge.evaluation.datasets import load_boolq, load_wikitext
from lmforge.evaluation.generation import GenerationSettings, generate_all
from lmforge.evaluation.loglikelihood import rolling_loglikelihoods
from lmforge.evaluation.perplexity import CorpusLikelihood, count_bytes, count_words, detokenize_wikitext
from lmforge.evaluation.zeroshot import headline, report_lines, run, split_items
from lmforge.log import get_logger, peak_rss_mb
from lmforge.model.card import record_evaluation

STAGE = "eval"
TABLE_NAMES = ("wikitext_docs.jsonl", "boolq_items.jsonl", "generations.jsonl", "zero_shot_items.jsonl")


# ---------------------------------------------------------------- the run

class EvalRun:
    """One evaluation: each part fills `results`; `write` saves everything, manifest last."""

    def __init__(self, cfg: EvalConfig, loaded, out: Path, mirror: str | None = None):

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

        result = run(self.loaded, self.cfg.zero_shot, resolve_mirror(self.mirror), self.cfg.runtime.batch_size)
        self.tables["zero_shot_items.jsonl"] = split_items(result)
        return result

    def generations(self) -> dict:

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

    def write(self, results: dict, config_dict: dict, inputs: dict, *, model_path: str, tokenizer_path: str) -> dict:

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
        atomic_write_json(self.out / "results.json", json_safe(results))
        atomic_write_text(self.out / "report.md", render_report(results))
        figures = {"wall_seconds": results["wall_seconds"], "peak_rss_mb": round(peak_rss_mb(), 1),
                   "partial": results["partial"], **headline_metrics(results)}
        manifest = write_manifest(self.out, STAGE, config=config_dict, inputs=inputs,
                                  tokenizer_sha256=m.tokenizer_sha256,
                                  outputs=["results.json", "report.md", *self.tables], figures=json_safe(figures))
        record_evaluation(model_path, STAGE, json_safe(headline_metrics(results)), results["expected"],
                          (self.out / "results.json").resolve())
        return manifest


def headline_metrics(results: dict) -> dict:
    wt, bq = results.get("wikitext", {}), results.get("boolq", {})
    picked = {"wikitext_word_perplexity": wt.get("word_perplexity"), "wikitext_byte_perplexity": wt.get("byte_perplexity"),
              "wikitext_bits_per_byte": wt.get("bits_per_byte"), "boolq_accuracy": bq.get("accuracy"),
              "boolq_yes_rate": bq.get("yes_rate"), "boolq_majority_baseline": bq.get("majority_baseline")}

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
