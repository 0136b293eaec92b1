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
from pathlib import Path

from lmforge.artifacts import prepare_output_dir
from lmforge.config import load_config, parse_set_overrides, project_file, to_dict
from lmforge.data.sources import data_fingerprint, resolve_mirror
from lmforge.evaluation.config import EvalConfig
from lmforge.evaluation.pretrain_suite import STAGE, EvalRun, closing_summary
from lmforge.evaluation.zeroshot import apply_tasks_flag, preflight
from lmforge.evaluation.zeroshot import data_identity as zero_shot_identity
from lmforge.model.loading import load_for_eval
from lmforge.pipeline.stage import StagePlan, run_stage

DEFAULT_CONFIG = "config/evaluation/pretrain_standard.json"


# ---------------------------------------------------------------- config


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
    return project_file(path) if path == DEFAULT_CONFIG else Path(path)


def build_config(args: argparse.Namespace) -> EvalConfig:

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
    cfg = build_config(args)
    preflight(cfg.zero_shot, resolve_mirror(args.mirror))  # harness installed, task data present: before anything
    config_dict = {**to_dict(cfg), "_data": data_identity(cfg, args.mirror)}
    if not cfg.zero_shot.tasks:
        config_dict.pop("zero_shot")  # as before the suite existed: results computed then stay up to date
    inputs = {"model": Path(args.model_path), "tokenizer": Path(args.tokenizer_path)}
    plan = StagePlan(STAGE, Path(args.output_dir), config_dict, inputs, force=args.force,
                     also_writes=(Path(args.model_path),))  # the scores go into the model's card too
    run_stage(plan, lambda p: evaluate(p, cfg, args))
    return 0


def evaluate(plan: StagePlan, cfg: EvalConfig, args: argparse.Namespace) -> dict:
    """Load the model, score every enabled part, write results, report and manifest."""
    loaded = load_for_eval(args.model_path, args.tokenizer_path, device=cfg.runtime.device,
                           dtype=cfg.runtime.dtype, max_length=cfg.runtime.max_length)
    out = prepare_output_dir(plan.output_dir)
    run = EvalRun(cfg, loaded, out, mirror=args.mirror)
    results = run.execute()
    manifest = run.write(results, plan.config, plan.inputs, model_path=args.model_path,
                         tokenizer_path=args.tokenizer_path)
    print(closing_summary(results, out))
    return manifest


def data_identity(cfg: EvalConfig, mirror: str | None) -> dict:
    """What the data were (mirror files or local files), so that a run on other data is
    never mistaken for up to date."""

    found = {name: data_fingerprint(hub=(s.hub_id, s.hub_config, s.split), files=s.local_file, mirror=mirror)
             for name, s in (("wikitext", cfg.wikitext), ("boolq", cfg.boolq)) if s.enabled}
    if cfg.zero_shot.tasks:
        found["zero_shot"] = zero_shot_identity(cfg.zero_shot.tasks, resolve_mirror(mirror))
    return found


