"""Step 4: tokenize a corpus and pack it into fixed-length training sequences.

Reads a corpus artifact (shards/*.jsonl.gz, sha256-checked against its manifest) and a
tokenizer artifact (spm.model, sha256-checked against tokenizer_config.json), encodes
the shards in parallel worker processes, splits documents 98/2 into train/val by a
hash of their id, and writes every row of exactly `seq_length` tokens to
train.bin/.idx and val.bin/.idx (Megatron MMIDIDX format) plus manifest.json.

Each document is stored as `<s> tokens </s>`; documents are concatenated and cut into
rows without regard to document boundaries; the tail of each split that does not fill
a row is dropped and counted. The output is byte-identical whatever --workers is.

example:
  lmforge pack --config config/pretrain/packing/default.json \\
      --corpus-dir data/datasets/tiny_23M_corpus \\
      --tokenizer-dir data/models/tokenizers/spm_32k \\
      --output-dir data/processed/tiny_23M_1024
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from lmforge.artifacts import load_manifest, read_json, write_manifest
from lmforge.config import config_from_dict, load_config, parse_set_overrides
from lmforge.data.packing import (
    SPLITS,
    STAGE,
    PackConfig,
    check_previous_pack,
    corpus_shards,
    effective_piece_chars,
    pack_streams,
    resolve_dtype,
    resolve_workers,
    verify_shards,
    worker_pool,
)
from lmforge.errors import ArtifactError
from lmforge.log import get_logger, human_bytes, human_count, peak_rss_mb
from lmforge.pipeline.stage import StagePlan, run_stage
from lmforge.tokenizer.format import MODEL_FILE
from lmforge.tokenizer.spm import load_tokenizer_artifact

# ---------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="packing config JSON (default: built-in defaults, as in "
                        "config/pretrain/packing/default.json)")
    parser.add_argument("--corpus-dir", required=True, help="corpus artifact (from `lmforge corpus`)")
    parser.add_argument("--tokenizer-dir", required=True, help="tokenizer artifact (from `lmforge tokenizer`)")
    parser.add_argument("--output-dir", required=True, help="where train/val .bin/.idx and manifest.json go")
    parser.add_argument("--workers", type=int, help="tokenizer processes (overrides the config; 0 = one per core)")
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="override a config value, e.g. --set seq_length=256 (repeatable)")
    parser.add_argument("--force", action="store_true",
                        help="redo even if up to date; overwrite a pack made with another tokenizer")


def load_pack_config(args: argparse.Namespace) -> PackConfig:

    overrides = parse_set_overrides(getattr(args, "overrides", None))
    if getattr(args, "workers", None) is not None:
        overrides["workers"] = args.workers
    if args.config:
        return load_config(args.config, PackConfig, overrides)
    return config_from_dict({}, PackConfig, source="<defaults>", overrides=overrides)


def main(args: argparse.Namespace) -> int:
    cfg = load_pack_config(args)
    result = run_pack(args.corpus_dir, args.tokenizer_dir, args.output_dir, cfg, force=args.force)
    if result is not None:
        print(format_summary(result, Path(args.output_dir)))
    return 0


def describe(args: argparse.Namespace) -> dict[str, str]:
    """Derived figures for `lmforge run --dry-run`, from the input manifests only (estimates)."""

    cfg = load_pack_config(args)
    out = {"seq_length": str(cfg.seq_length), "split": f"{1 - cfg.val_fraction:.0%}/{cfg.val_fraction:.0%} by document",
           "document format": "<s> tokens </s>", "workers": str(resolve_workers(cfg.workers))}
    try:
        figures = read_json(Path(args.corpus_dir) / "manifest.json", "corpus manifest").get("figures", {})
    except ArtifactError:  # the corpus may not exist yet at dry-run time
        return out
    tokens = figures.get("tokens") or figures.get("total_tokens")
    if not tokens and figures.get("characters"):
        tokens = figures["characters"] / 4.0  # ~4 characters per token for a 32K English SentencePiece model
    if tokens:
        rows = int(tokens) // cfg.seq_length
        out["tokens (estimate)"] = human_count(tokens)
        out["sequences (estimate)"] = f"{human_count(rows)} ({human_count(rows * cfg.val_fraction)} val)"
    return out



def run_pack(corpus_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike, output_dir: str | os.PathLike,
             cfg: PackConfig, *, force: bool = False) -> dict | None:
    """Build the pack through the runner; returns its manifest, or None when it was already up to date."""
    corpus_dir, tokenizer_dir, out_dir = Path(corpus_dir), Path(tokenizer_dir), Path(output_dir)
    tok = load_tokenizer_artifact(tokenizer_dir)  # manifest, sha256 of its files, lineage
    get_logger(__name__).info("Tokenizer loaded: SHA256 validated (%s, vocab %d)", tok.sha256[:16], tok.vocab_size)
    check_previous_pack(out_dir, tok.sha256, str(tokenizer_dir / MODEL_FILE), force)
    plan = StagePlan(STAGE, out_dir, cfg.output_key(), {"corpus": corpus_dir, "tokenizer": tokenizer_dir}, force=force)
    return run_stage(plan, lambda p: build_pack(p, cfg, tok)).manifest


def build_pack(plan: StagePlan, cfg: PackConfig, tok) -> dict:
    """Verify the corpus, tokenize it in parallel, write both splits and the manifest."""
    log = get_logger(__name__)
    started = time.time()
    corpus_dir, out_dir, inputs = plan.inputs["corpus"], plan.output_dir, plan.inputs
    dtype = resolve_dtype(cfg.dtype, tok.vocab_size)
    corpus_manifest = load_manifest(corpus_dir, "corpus")
    shards = corpus_shards(corpus_dir, corpus_manifest)
    log.info("Corpus manifest loaded: %d shards, %s documents", len(shards),
             corpus_manifest.get("figures", {}).get("documents", "?"))
    workers = resolve_workers(cfg.workers)
    piece_chars = effective_piece_chars(tok.sp, cfg.encode_piece_chars)
    settings = {"seed": cfg.seed, "val_fraction": cfg.val_fraction, "encode_batch_size": cfg.encode_batch_size,
                "encode_piece_chars": piece_chars}
    init_args = (tok.sp.serialized_model_proto(), settings, dtype.name, tok.bos_id, tok.eos_id)
    with worker_pool(workers, init_args) as pool:
        verify_shards(corpus_dir, corpus_manifest, shards, pool)
        log.info("Integrity verified: %d/%d shards match their sha256", len(shards), len(shards))
        counts = pack_streams(corpus_dir, shards, out_dir, cfg, dtype, pool, workers)
    return finish(out_dir, cfg, tok, dtype, counts, inputs, {"workers": workers, **settings}, started)



def finish(out_dir: Path, cfg: PackConfig, tok, dtype, counts: dict, inputs: dict, execution: dict,
           started: float) -> dict:
    """Write the manifest (last) with the pack's figures."""
    import resource

    rows = counts["rows"]
    stored = {s: rows[s] * cfg.seq_length for s in SPLITS}
    seconds = time.time() - started
    figures = {
        "seq_length": cfg.seq_length,
        "dtype": dtype.name,
        "vocab_size": tok.vocab_size,
        "total_tokens": sum(stored.values()),
        "tokens": stored,
        "sequences": rows,
        "documents": {s: counts["documents"][s] for s in SPLITS},
        "tokens_per_source": dict(sorted(counts["source_tokens"].items())),
        "documents_per_source": dict(sorted(counts["source_documents"].items())),
        "document_format": "<s> tokens </s>",
        "leftover": {"policy": cfg.leftover, "dropped_tokens": counts["leftover"]},
        "padding_tokens": 0,
        "skipped_records": {k: v for k, v in sorted(counts["skipped"].items()) if not k.startswith("kept_")},
        "documents_without_id": counts["skipped"]["kept_without_id"],
        "workers": execution["workers"],
        "seconds": round(seconds, 2),
        "tokens_per_second": round(sum(counts["source_tokens"].values()) / max(seconds, 1e-9)),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_worker_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }
    outputs = [f"{s}.{ext}" for s in SPLITS for ext in ("bin", "idx")]
    return write_manifest(out_dir, STAGE, config=cfg.output_key(), outputs=outputs, inputs=inputs,
                          figures=figures, tokenizer_sha256=tok.sha256,
                          extra={"execution": {k: execution[k] for k in
                                               ("workers", "encode_batch_size", "encode_piece_chars")}})


def format_summary(manifest: dict, out_dir: Path) -> str:
    """The closing report, in the plan's shape."""

    f = manifest["figures"]
    rows, total_rows = f["sequences"], sum(f["sequences"].values())
    sizes = {e["path"]: e["bytes"] for e in manifest["outputs"]}
    dropped = sum(f["leftover"]["dropped_tokens"].values())
    lines = [
        "✅ Sequence packing complete!",
        f"   📊 Total tokens: {human_count(f['total_tokens'])} ({f['total_tokens']:,} in rows; "
        f"{dropped:,} leftover tokens dropped)",
        f"   🎯 Sequences: {total_rows:,} ({f['seq_length']} tokens each, {f['dtype']})",
        f"   📂 Train: {rows['train']:,} sequences ({rows['train'] / total_rows:.1%}), "
        f"{f['documents']['train']:,} documents",
        f"   📂 Val: {rows['val']:,} sequences ({rows['val'] / total_rows:.1%}), {f['documents']['val']:,} documents",
        "   💾 Files:",
        *(f"      - {name} ({human_bytes(size)})" for name, size in sizes.items()),
        f"   🔑 tokenizer_sha256: {manifest['tokenizer_sha256']}",
        f"   ⏱️  {f['seconds']:.1f} s, {human_count(f['tokens_per_second'])} tokens/s, {f['workers']} worker(s), "
        f"peak memory {f['peak_rss_mb']:.0f} MiB (workers {f['peak_worker_rss_mb']:.0f} MiB)",
        f"📁 Output: {out_dir}/",
    ]
    return "\n".join(lines)
