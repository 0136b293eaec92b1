"""What the corpus stage prints: per-source results, the closing summary and the --analyze-only plan."""

from __future__ import annotations

from pathlib import Path

from lmforge.data.corpus.cache import SourceState, shortfall
from lmforge.data.decontam import summary_line as decontam_summary
from lmforge.log import get_logger, human_count

log = get_logger(__name__)


def fmt_skips(skips: dict) -> str:
    """Skip counts as 'reason=N, ...' (zero counts left out)."""
    return ", ".join(f"{k}={v:,}" for k, v in sorted(skips.items()) if v)


def report_source(st: SourceState) -> None:
    """Log one source's phase-1 result, loudly when it ran dry."""
    rate = st.docs / max(st.seconds, 1e-9)
    log.info("   ✓ %s: %s docs, %s tokens (%.2f%% of budget) in %.1fs, %.0f docs/s; duplicates %s; skipped: %s",
             st.name, f"{st.docs:,}", f"{st.tokens:,}", 100 * st.tokens / st.budget, st.seconds, rate,
             f"{st.duplicates:,}", fmt_skips(st.all_skips()) or "none")
    if shortfall(st):
        log.warning("⚠️  SOURCE %s RAN DRY: %s of %s tokens (%.1f%% of its budget)", st.name, f"{st.tokens:,}",
                    f"{st.budget:,}", 100 * st.tokens / st.budget)


def print_summary(figures: dict, out: Path) -> None:
    """The closing summary of a build, from the manifest's figures."""
    exact = figures["token_counting"]["method"] == "exact"
    lines = [
        "✅ Corpus complete (streaming, two phases)!",
        f"   📊 Final documents: {figures['documents']:,}",
        (f"   🎯 Exact tokens: {figures['tokens']:,}" if exact else
         f"   🎯 Tokens (estimated, characters/4): {figures['tokens']:,}"),
        f"   🧹 Duplicates removed: {figures['duplicates']:,} ({100 * figures['dedup_rate']:.2f}%)",
        f"   🗑️  Skipped records: {fmt_skips(figures['skipped']) or 'none'}",
        f"   💾 Peak memory: {figures['peak_rss_mb']:.0f} MB (process RSS; ~340 MB of it is datasets, pyarrow and "
        "torch themselves, the streaming's own stays flat, docs/corpus.md)",
        f"   📦 Output shards: {figures['shard_count']} in {out / 'shards'}",
        f"   ⏱️  Time: {figures['seconds']['total']:.1f}s",
    ]
    if "decontamination" in figures:
        lines.append(decontam_summary(figures["decontamination"]))
    for name, missing in figures["budget_shortfalls"].items():
        src = figures["sources"][name]
        lines.append(f"   ⚠️  BUDGET SHORTFALL: {name} ran dry at {src['tokens']:,} of {src['budget']:,} tokens "
                     f"({missing:,} missing)")
    print("\n".join(lines), flush=True)


def print_plan(plan: dict, out: Path) -> None:
    """The --analyze-only plan, one line per source and a total."""
    how = "exact" if plan["token_counting"]["method"] == "exact" else "estimated, characters/4"
    lines = [f"📋 Corpus plan ({how} token counts) -> {out / 'plan.json'}"]
    for r in plan["sources"]:
        note = f"  ⚠️  {r['warning']}" if "warning" in r else ""
        lines.append(f"   {r['name']}: ~{human_count(r['estimated_documents'])} samples "
                     f"({human_count(r['budget_tokens'])} tokens, {r['percent']:g}%; "
                     f"~{r['tokens_per_document']:,.0f} tokens/doc){note}")
    t = plan["total"]
    lines.append(f"   TOTAL: ~{human_count(t['estimated_documents'])} samples, {human_count(t['tokens'])} tokens, "
                 f"~{t['estimated_shards']} shards")
    print("\n".join(lines), flush=True)
