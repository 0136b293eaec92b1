"""Step 7: build an SFT dataset: ChatML conversations, tokenized, with loss masks.

Reads Alpaca or OASST1 (from the hub id in the config, redirected by LMFORGE_MIRROR,
or from local files with --input-files), renders each conversation in ChatML, tokenizes
it with a loss mask over the assistant replies, splits train/val and writes
train/val .bin/.idx plus their _mask files and manifest.json (with tokenizer_sha256
and tokenizer_config_sha256).

Example:
  lmforge sft-data --config config/sft/datasets/alpaca_chatml.json \\
      --tokenizer_dir data/models/tokenizers/spm_32k --output_dir data/sft_processed/alpaca_chatml
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lmforge.artifacts import atomic_write_text, prepare_output_dir, sha256_file, write_manifest
from lmforge.config import load_config, parse_set_overrides, spec, to_dict
from lmforge.data.chatml import TRUNCATION_POLICIES, encode_conversation, format_chatml, validate_messages
from lmforge.data.decontam import DecontaminationParams, Tally, build_index, screen, summary_line
from lmforge.data.decontam import data_identity as decontam_data_identity
from lmforge.data.decontam import figures as decontam_figures
from lmforge.data.indexed import all_or_nothing
from lmforge.data.sft_dataset import SPLITS, STAGE, SplitWriter, split_files
from lmforge.data.sft_sources import SourceConfig, iter_conversations
from lmforge.data.sources import data_fingerprint, resolve_mirror
from lmforge.errors import DataError
from lmforge.log import get_logger, human_count, peak_rss_mb, progress
from lmforge.model.external import load_any_tokenizer
from lmforge.pipeline.stage import StagePlan, run_stage
from lmforge.tokenizer.format import CONFIG_FILE

log = get_logger(__name__)
SAMPLES_FILE = "samples.jsonl"
SAMPLE_COUNT = 5


@dataclass
class ProcessingConfig:
    max_length: int = spec(1024, min=8, help="tokens per conversation, BOS included")
    truncation: str = spec("turns", choices=TRUNCATION_POLICIES,
                           help="over-long conversations: keep whole turns that fit ('turns') or drop them")
    val_fraction: float = spec(0.02, min=0.0, max=0.5, help="share of groups (records, OASST1 trees) sent to val")
    max_examples: int | None = spec(None, min=1, help="stop after this many conversations kept (a cap)")
    system_message: str | None = spec(None, help="system message prepended to every conversation")


@dataclass
class SFTDataConfig:
    name: str = spec(help="dataset name, shown in logs and manifests")
    source: SourceConfig = spec(default_factory=SourceConfig)
    processing: ProcessingConfig = spec(default_factory=ProcessingConfig)
    decontamination: DecontaminationParams = spec(default_factory=DecontaminationParams)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="SFT dataset config (JSON)")
    parser.add_argument("--tokenizer_dir", "--tokenizer-dir", dest="tokenizer_dir", required=True,
                        help="tokenizer directory (the base model's)")
    parser.add_argument("--output_dir", "--output-dir", dest="output_dir", required=True, help="output directory")
    parser.add_argument("--input-files", "--input_files", dest="input_files", nargs="+",
                        help="read these local files (jsonl/json/.gz/parquet, globs) instead of the hub")
    parser.add_argument("--max-examples", "--max_examples", dest="max_examples", type=int,
                        help="cap on conversations kept (overrides processing.max_examples)")
    parser.add_argument("--mirror", help="hub mirror directory (default: $LMFORGE_MIRROR)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the output is up to date")


def resolve_config(args) -> SFTDataConfig:
    overrides = parse_set_overrides(args.set)
    if args.input_files:
        # Local files become part of the resolved config, so the manifest says what was read.
        overrides["source.files"] = [str(Path(f)) for f in args.input_files]
    if args.max_examples is not None:
        overrides["processing.max_examples"] = args.max_examples
    return load_config(args.config, SFTDataConfig, overrides)


def describe(args) -> dict[str, str]:
    cfg = resolve_config(args)
    where = ", ".join(cfg.source.files) if cfg.source.files else cfg.source.hub_id
    return {"source": f"{cfg.source.format} from {where}", "max_length": str(cfg.processing.max_length),
            "cap": str(cfg.processing.max_examples or "none"), "val_fraction": str(cfg.processing.val_fraction)}


def main(args) -> int:
    cfg = resolve_config(args)
    tokenizer = load_any_tokenizer(args.tokenizer_dir)  # lmforge's, or an external model's own (lmforge.model.external)
    out = Path(args.output_dir)
    config_dict = {**to_dict(cfg), "_data": data_fingerprint(
        hub=(cfg.source.hub_id, cfg.source.hub_config, cfg.source.split) if cfg.source.hub_id else None,
        files=cfg.source.files, mirror=args.mirror)}
    if cfg.decontamination.mode == "off":
        config_dict.pop("decontamination")  # as before the check existed: data built then stay up to date
    else:  # an evaluation set added to the mirror later makes the screened data out of date
        config_dict["_decontamination_data"] = decontam_data_identity(cfg.decontamination, resolve_mirror(args.mirror))
    plan = StagePlan(STAGE, out, config_dict, {"tokenizer": Path(args.tokenizer_dir)}, force=args.force)
    run_stage(plan, lambda p: build_sft_data(p, cfg, tokenizer, args))
    return 0


def build_sft_data(plan: StagePlan, cfg, tokenizer, args) -> dict:
    """Render, tokenize, mask and split the conversations; write the manifest."""
    out = prepare_output_dir(plan.output_dir)
    started = time.time()
    figures = build(cfg, tokenizer, out, args)
    figures["seconds"] = round(time.time() - started, 1)
    figures["peak_rss_mb"] = round(peak_rss_mb(), 1)
    outputs = [f for split in SPLITS for f in split_files(split)] + [SAMPLES_FILE]
    manifest = write_manifest(out, STAGE, config=plan.config, outputs=outputs, inputs=plan.inputs, figures=figures,
                              tokenizer_sha256=tokenizer.sha256,
                              extra={"tokenizer_config_sha256": sha256_file(Path(args.tokenizer_dir) / CONFIG_FILE),
                                     "name": cfg.name, **_external(tokenizer)})
    print_summary(cfg, out, figures, tokenizer.sha256)
    return manifest


def _external(tokenizer) -> dict:
    record = getattr(tokenizer, "record", None)
    return {"external_tokenizer": record} if record else {}


def _is_val(group_ordinal: int, fraction: float) -> bool:
    """Evenly spaced groups go to val: exactly round-down(n * fraction) of the first n groups."""
    return int((group_ordinal + 1) * fraction) > int(group_ordinal * fraction)


def build(cfg: SFTDataConfig, tokenizer, out: Path, args) -> dict:
    """Stream conversations into the split writers; return the figures for the manifest."""
    p = cfg.processing
    skips: Counter = Counter()
    writers = {split: SplitWriter(out, split, tokenizer.vocab_size) for split in SPLITS}
    samples: list[str] = []
    truncated = 0
    group, ordinal = None, -1
    index, tally = build_index(cfg.decontamination, resolve_mirror(args.mirror)), Tally()
    with all_or_nothing(writers):
        conversations = iter_conversations(cfg.source, skips, mirror=args.mirror)
        for group_id, messages in progress(conversations, desc=f"sft-data {cfg.name}", unit="conv"):
            if group_id != group:
                group, ordinal = group_id, ordinal + 1
            if p.system_message:
                messages = [{"role": "system", "content": p.system_message}, *messages]
            reason = validate_messages(messages)
            if reason:
                skips[reason] += 1
                continue
            if screen(index, cfg.decontamination.mode, tally, "\n".join(m["content"] for m in messages)):
                skips["contaminated"] += 1  # shares an n-gram with an evaluation item (see decontamination)
                continue
            encoded = encode_conversation(tokenizer, messages, p.max_length, p.truncation)
            if encoded is None:
                skips["too_long"] += 1
                continue
            truncated += encoded.truncated
            writers["val" if _is_val(ordinal, p.val_fraction) else "train"].add(encoded.ids, encoded.mask)
            if len(samples) < SAMPLE_COUNT:
                samples.append(json.dumps({"text": format_chatml(messages), "tokens": len(encoded.ids),
                                           "assistant_tokens": encoded.assistant_tokens}, ensure_ascii=False))
            if p.max_examples and sum(w.examples for w in writers.values()) >= p.max_examples:
                log.info("cap reached: %d conversations", p.max_examples)
                break
        if writers["train"].examples == 0:
            raise DataError(f"{cfg.name}: no usable conversation (skipped: {dict(skips) or 'none'})")
    atomic_write_text(out / SAMPLES_FILE, "\n".join(samples) + "\n")
    return {
        "examples": {s: w.examples for s, w in writers.items()},
        "tokens": {s: w.tokens_written for s, w in writers.items()},
        "assistant_tokens": {s: w.assistant_tokens for s, w in writers.items()},
        "groups": ordinal + 1,
        "truncated": truncated,
        "skipped": dict(sorted(skips.items())),
        "max_length": p.max_length,
        "vocab_size": tokenizer.vocab_size,
        "decontamination": decontam_figures(cfg.decontamination, index, {cfg.name: tally}),
    }


def print_summary(cfg: SFTDataConfig, out: Path, figures: dict, sha: str) -> None:
    ex, tok = figures["examples"], figures["tokens"]
    skipped = ", ".join(f"{k}={v}" for k, v in figures["skipped"].items()) or "none"
    print(f"✅ SFT corpus ready: {cfg.name}\n"
          f"   📊 Conversations: {ex['train']} train / {ex['val']} val ({figures['truncated']} truncated at turn boundaries)\n"
          f"   🎯 Tokens: {human_count(tok['train'] + tok['val'])} "
          f"({human_count(sum(figures['assistant_tokens'].values()))} assistant tokens in the loss)\n"
          f"   🚫 Skipped: {skipped}\n"
          f"{summary_line(figures['decontamination'])}\n"
          f"   🔐 Tokenizer SHA256: {sha}\n"
          f"   📁 Output: {out}/")
