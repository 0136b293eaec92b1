"""The SFT evaluation suite (`lmforge eval-sft`): assistant-token perplexity on the SFT val
splits, BoolQ (harness and ChatML prompts), smoke tests of the chat behaviour, the BoolQ change
against the pretrained model, optional zero-shot tasks. The stage is `lmforge.stages.eval_sft`.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path

from lmforge.artifacts import (
    atomic_open,
    atomic_write_json,
    atomic_write_text,
    check_tokenizer_lineage,
    load_manifest,
    read_json,
    write_manifest,
)
from lmforge.data.sft_batches import iter_eval_batches
from lmforge.data.sft_dataset import STAGE as DATA_STAGE
from lmforge.data.sft_dataset import SFTSplit
from lmforge.data.sources import resolve_mirror
from lmforge.errors import ConfigError
from lmforge.evaluation.boolq import evaluate_boolq
from lmforge.evaluation.config import EvalSFTConfig, json_safe
from lmforge.evaluation.datasets import load_boolq
from lmforge.evaluation.smoke import CONTENT_RULES, quality_score, rule_pass_rates, score_reply
from lmforge.evaluation.zeroshot import headline as zero_shot_headline
from lmforge.evaluation.zeroshot import report_lines, run, split_items
from lmforge.log import get_logger, peak_rss_mb
from lmforge.model.card import record_evaluation
from lmforge.model.chat import Sampling, generate_reply
from lmforge.tokenizer.spm import load_tokenizer
from lmforge.training.loop import causal_lm_loss_sum, count_label_tokens

STAGE = "eval-sft"


def pretrain_results_path(cfg: EvalSFTConfig, output_file: Path) -> Path | None:
    """The configured pretraining results, else the plan's sibling layout (sft/<name> -> pretrain/<name>)."""
    if cfg.pretrain_results:
        p = Path(cfg.pretrain_results)
        return p / "results.json" if p.is_dir() else p
    guess = output_file.parent.parent.parent / "pretrain" / output_file.parent.name / "results.json"
    return guess if output_file.parent.parent.name == "sft" and guess.is_file() else None



class SFTEvalRun:
    """One SFT evaluation: each part adds to `results`; `write` saves it all, manifest last."""

    def __init__(self, cfg: EvalSFTConfig, loaded, args, out: Path):

        self.cfg, self.loaded, self.args, self.out = cfg, loaded, args, out
        self.tokenizer = load_tokenizer(args.tokenizer_path)  # the ids SFT data and chat use
        self.log = get_logger(__name__)
        self.tables: dict[str, list[dict]] = {}

    def execute(self) -> dict:
        start = time.time()
        results: dict = {"stage": STAGE}
        if self.cfg.sft_perplexity.enabled:
            results["sft_perplexity"] = self.sft_perplexity()
        if self.cfg.boolq.enabled:
            results["boolq"] = self.boolq("harness", "boolq_items.jsonl")
            if self.cfg.boolq.chatml_variant:
                results["boolq_chatml"] = self.boolq("chatml", "boolq_chatml_items.jsonl")
        if self.cfg.smoke.enabled and self.cfg.smoke.cases:
            results["smoke"] = self.smoke()
        if self.cfg.zero_shot.tasks:

            results["zero_shot"] = run(self.loaded, self.cfg.zero_shot, resolve_mirror(self.args.mirror),
                                       self.cfg.runtime.batch_size)
            self.tables["zero_shot_items.jsonl"] = split_items(results["zero_shot"])
        results["pretrain_comparison"] = self.compare_with_pretrain(results)
        results["partial"] = any(isinstance(v, dict) and v.get("partial") for v in results.values())
        results["wall_seconds"] = round(time.time() - start, 2)
        return results

    # -------------------------------------------------------- parts

    def data_dirs(self) -> list[str]:
        configured = self.cfg.sft_perplexity.data_dirs
        if configured:
            return configured
        recorded = (self.loaded.manifest.get("config") or {}).get("data_dirs")
        if not recorded:

            raise ConfigError(f"{self.args.model_path}: its manifest records no SFT data dirs; "
                              "pass --data_dirs or set sft_perplexity.data_dirs")
        return recorded

    def sft_perplexity(self) -> dict:

        start = time.time()
        per_dir, total_nll, total_tokens = {}, 0.0, 0
        for d in self.data_dirs():
            manifest = load_manifest(d, DATA_STAGE)
            check_tokenizer_lineage(self.loaded.tokenizer_sha256, f"tokenizer {self.args.tokenizer_path}",
                                    manifest.get("tokenizer_sha256"), f"SFT data {d}")
            split = SFTSplit(d, "val")
            cap = self.cfg.sft_perplexity.max_examples
            batches = iter_eval_batches(split, self.cfg.runtime.batch_size, self.tokenizer.pad_id, limit=cap)
            nll, tokens = assistant_nll(self.loaded.model, batches)
            per_dir[d] = {"conversations": min(len(split), cap or len(split)), "tokens": tokens,
                          "perplexity": _exp(nll / tokens) if tokens else None, "partial": bool(cap and cap < len(split))}
            total_nll, total_tokens = total_nll + nll, total_tokens + tokens
        ppl = _exp(total_nll / total_tokens) if total_tokens else None
        self.log.info("SFT perplexity (assistant tokens): %s over %d tokens", ppl, total_tokens)
        return {"perplexity": ppl, "loss": total_nll / total_tokens if total_tokens else None, "tokens": total_tokens,
                "datasets": per_dir, "partial": any(v["partial"] for v in per_dir.values()),
                "seconds": round(time.time() - start, 2)}

    def boolq(self, prompt_format: str, table: str) -> dict:

        s, m = self.cfg.boolq, self.loaded
        skips: Counter = Counter()
        start = time.time()
        data = load_boolq(s.local_file, limit=s.max_examples, mirror=self.args.mirror, skips=skips,
                          hub=(s.hub_id, s.hub_config, s.split))
        result = evaluate_boolq(m.model, m.encoder, data.records, max_length=m.max_length,
                                batch_size=self.cfg.runtime.batch_size, prompt_format=prompt_format)
        self.tables[table] = result.items
        self.log.info("BoolQ (%s prompt): accuracy %.4f (yes-rate %.3f)", prompt_format, result.accuracy, result.yes_rate)
        return {**result.summary(), "prompt_format": prompt_format, "source": data.source, "partial": data.partial,
                "skipped": dict(skips), "seconds": round(time.time() - start, 2)}

    def smoke(self) -> dict:

        s = self.cfg.smoke
        start = time.time()
        sampling = Sampling(max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                            repetition_penalty=s.repetition_penalty)
        results, rows = [], []
        for case in s.cases:
            system = case.system or s.system_message
            messages = ([{"role": "system", "content": system}] if system else []) + \
                       [{"role": "user", "content": case.prompt}]
            reply = generate_reply(self.loaded.model, self.tokenizer, messages, sampling)
            scored = score_reply(case, reply.text, reply.stopped_on_im_end, s.rules)
            results.append(scored)
            rows.append({"case": case.name, "prompt": case.prompt, "reply": reply.text,
                         "new_tokens": len(reply.ids) + int(reply.stopped_on_im_end),
                         "stop": "im_end" if reply.stopped_on_im_end else "length",
                         "rules": scored.rules, "score": scored.score})
        self.tables["generations.jsonl"] = rows
        quality = quality_score(results)
        self.log.info("smoke tests: %d cases, quality %.3f", len(results), quality)
        return {"quality_score": quality, "cases": len(results), "rule_pass_rates": rule_pass_rates(results),
                "scores": {r.case: r.score for r in results}, "file": "generations.jsonl",
                "seconds": round(time.time() - start, 2)}

    def compare_with_pretrain(self, results: dict) -> dict | None:
        path = pretrain_results_path(self.cfg, Path(self.args.output_file))
        if path is None:
            return None

        pre = read_json(path, "pretraining results")
        before, after = (pre.get("boolq") or {}).get("accuracy"), (results.get("boolq") or {}).get("accuracy")
        comparable = (before is not None and after is not None and
                      (pre.get("boolq") or {}).get("examples") == results["boolq"].get("examples"))
        return {"pretrain_results": str(path), "pretrain": pre.get("boolq"),
                "boolq_accuracy_pretrain": before, "boolq_accuracy_sft": after,
                "boolq_delta": (after - before) if comparable else None, "comparable": comparable}

    # -------------------------------------------------------- outputs

    def write(self, results: dict, output_file: Path, config_dict: dict, inputs: dict) -> dict:

        m = self.loaded
        results.update({"model_path": str(self.args.model_path), "tokenizer_path": str(self.args.tokenizer_path),
                        "tokenizer_sha256": m.tokenizer_sha256, "device": m.device, "dtype": m.dtype,
                        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "expected": config_dict["expected"],
                        "config": config_dict})
        for name, rows in self.tables.items():
            with atomic_open(self.out / name, "w", encoding="utf-8") as handle:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        atomic_write_json(output_file, json_safe(results))
        atomic_write_text(self.out / "report.md", render_report(results))
        figures = {"wall_seconds": results["wall_seconds"], "peak_rss_mb": round(peak_rss_mb(), 1),
                   "partial": results["partial"], **headline(results)}
        manifest = write_manifest(self.out, STAGE, config=config_dict, inputs=inputs,
                                  tokenizer_sha256=m.tokenizer_sha256,
                                  outputs=[output_file.name, "report.md", *self.tables], figures=json_safe(figures))
        record_evaluation(self.args.model_path, STAGE, json_safe(headline(results)), results["expected"],
                          Path(output_file).resolve())
        return manifest


def assistant_nll(model, batches) -> tuple[float, int]:
    """Summed NLL and count of the masked-in (assistant) tokens over the batches."""
    import torch

    device = next(model.parameters()).device
    nll, tokens = 0.0, 0
    with torch.inference_mode():
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            nll += float(causal_lm_loss_sum(logits, batch["labels"]))
            tokens += count_label_tokens(batch["labels"])
    return nll, tokens


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else float("inf")


def headline(results: dict) -> dict:
    picked = {"sft_perplexity": (results.get("sft_perplexity") or {}).get("perplexity"),
              "boolq_accuracy": (results.get("boolq") or {}).get("accuracy"),
              "boolq_chatml_accuracy": (results.get("boolq_chatml") or {}).get("accuracy"),
              "smoke_quality": (results.get("smoke") or {}).get("quality_score"),
              "boolq_delta_vs_pretrain": (results.get("pretrain_comparison") or {}).get("boolq_delta")}

    return {**{k: v for k, v in picked.items() if v is not None}, **zero_shot_headline(results.get("zero_shot"))}


def _row(name: str, value, expected: list[float] | None, fmt: str) -> str:
    if value is None:
        return f"| {name} | {'-' if not expected else f'{expected[0]:g}-{expected[1]:g}'} | n/a | |"
    verdict = "" if not expected else ("within" if expected[0] <= value <= expected[1] else
                                      ("below" if value < expected[0] else "above"))
    exp_text = "-" if not expected else f"{expected[0]:g}-{expected[1]:g}"
    return f"| {name} | {exp_text} | {format(value, fmt)} | {verdict} |"


def render_report(results: dict) -> str:
    h, e = headline(results), results["expected"]
    lines = [f"# SFT evaluation report: {results['model_path']}", "",
             f"- tokenizer: `{results['tokenizer_path']}` (sha256 `{results['tokenizer_sha256']}`)",
             f"- device: {results['device']} ({results['dtype']}), wall time {results['wall_seconds']:.1f} s"]
    if results["partial"]:
        lines.append("- **PARTIAL**: some parts were capped; not comparable with full-set figures")
    lines += ["", "| Metric | Expected (plan) | Obtained | |", "|---|---|---|---|",
              _row("SFT perplexity (assistant tokens)", h.get("sft_perplexity"), e["sft_perplexity"], ".2f"),
              _row("BoolQ accuracy (pretraining protocol)", h.get("boolq_accuracy"), e["boolq_accuracy"], ".4f"),
              _row("BoolQ accuracy (ChatML prompt)", h.get("boolq_chatml_accuracy"), None, ".4f"),
              _row("BoolQ delta vs pretrain", h.get("boolq_delta_vs_pretrain"), None, "+.4f"),
              _row("Smoke quality (0-1)", h.get("smoke_quality"), e["smoke_quality"], ".3f")]
    smoke = results.get("smoke")
    if smoke:
        lines += ["", "## Smoke tests", "", "| rule | pass rate |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in smoke["rule_pass_rates"].items()]
        lines += ["", f"Replies and per-rule verdicts: `{smoke['file']}`"]

    lines += report_lines(results.get("zero_shot"))
    return "\n".join(lines) + "\n"


def why_not_compared(comparison: dict | None) -> str:
    """Why there is no BoolQ delta against pretraining, in the words a user can act on."""
    if not comparison:
        return "no pretrain results to compare"
    before = (comparison.get("pretrain") or {}).get("examples")
    if comparison.get("boolq_accuracy_pretrain") is None:
        return f"{comparison['pretrain_results']} has no BoolQ accuracy to compare"
    return (f"not compared: pretrain scored {before} BoolQ questions ({comparison['pretrain_results']}), "
            "this run a different number; give both the same limit")


def closing_summary(results: dict, output_file: Path) -> str:
    h, e = headline(results), results["expected"]
    lines = ["✅ SFT evaluation complete!" + (" (PARTIAL: capped)" if results["partial"] else "")]
    if "sft_perplexity" in h:
        lo, hi = e["sft_perplexity"]
        lines.append(f"   📉 SFT perplexity: {h['sft_perplexity']:.2f} (expected {lo:g}-{hi:g})")
    if "boolq_accuracy" in h:
        lo, hi = e["boolq_accuracy"]
        delta = h.get("boolq_delta_vs_pretrain")
        lines.append(f"   🎯 BoolQ accuracy: {h['boolq_accuracy']:.2%} (expected {lo:.0%}-{hi:.0%}; "
                     + (f"{delta * 100:+.1f} points vs pretrain)" if delta is not None
                        else why_not_compared(results.get("pretrain_comparison")) + ")"))
    if "boolq_chatml_accuracy" in h:
        lines.append(f"   💬 BoolQ, ChatML prompt: {h['boolq_chatml_accuracy']:.2%}")
    if "smoke_quality" in h:
        lo, hi = e["smoke_quality"]
        rates = results["smoke"].get("rule_pass_rates") or {}
        content = [rates[k] for k in CONTENT_RULES if k in rates]
        answers = f"; answer-content rules passed {sum(content) / len(content):.0%}" if content else ""
        lines.append(f"   🧪 Smoke quality: {h['smoke_quality']:.3f} (expected {lo:g}-{hi:g}; "
                     f"{results['smoke']['cases']} cases, format and content rules{answers})")
    lines.append(f"   ⏱️  Duration: {results['wall_seconds']:.1f} s")
    lines.append(f"   📁 Results: {output_file}")
    return "\n".join(lines)
