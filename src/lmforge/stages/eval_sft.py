"""Step 9: evaluate an SFT model: SFT perplexity, BoolQ (two prompts), smoke tests.

- SFT perplexity: exp(mean negative log-likelihood) of the assistant tokens (the SFT
  loss mask, `<|im_end|>` included) over the val split of each SFT data directory
  (the ones the model was trained on, read from its manifest, unless configured).
- BoolQ with exactly the pretraining protocol (`lmforge eval`'s code and prompt, so
  the two compare), plus the same questions as a ChatML user turn answered "yes"/"no".
- Smoke tests from the config: each prompt is answered greedily in ChatML and checked
  by machine-checkable rules (lmforge.evaluation.smoke); quality score in [0, 1].
- Optional zero-shot tasks (`--tasks` / `zero_shot.tasks`) through lm-evaluation-harness,
  exactly as `lmforge eval` runs them (lmforge.evaluation.zeroshot), so pretrain and SFT compare.
- The pretraining results (--pretrain-results, or evaluation_results/pretrain/<name>/
  results.json beside the output when it exists) give the BoolQ delta.

Outputs beside --output_file: the results JSON, report.md, generations.jsonl,
boolq_items.jsonl, boolq_chatml_items.jsonl and manifest.json (last).

Example:
  lmforge eval-sft --config config/evaluation/sft_standard.json \\
      --model_path checkpoints/sft/tiny/final --tokenizer_path data/models/tokenizers/spm_32k \\
      --output_file evaluation_results/sft/tiny/results.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lmforge.artifacts import prepare_output_dir
from lmforge.config import load_config, parse_set_overrides, to_dict
from lmforge.data.sources import resolve_mirror
from lmforge.evaluation.config import EvalSFTConfig
from lmforge.evaluation.sft_suite import STAGE, SFTEvalRun, closing_summary
from lmforge.evaluation.zeroshot import apply_tasks_flag, data_identity, preflight
from lmforge.model.loading import load_for_eval
from lmforge.pipeline.stage import StagePlan, run_stage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="SFT evaluation config (JSON)")
    parser.add_argument("--model_path", "--model-path", dest="model_path", required=True, help="SFT model dir (final/)")
    parser.add_argument("--tokenizer_path", "--tokenizer-path", dest="tokenizer_path", required=True,
                        help="tokenizer directory; must be the one the model was trained with")
    parser.add_argument("--output_file", "--output-file", dest="output_file", required=True,
                        help="results JSON; the other outputs go beside it")
    parser.add_argument("--pretrain-results", "--pretrain_results", dest="pretrain_results",
                        help="pretraining results.json (or its directory) for the BoolQ delta")
    parser.add_argument("--data_dirs", "--data-dirs", dest="data_dirs", nargs="+",
                        help="SFT data dirs for perplexity (default: the model's training data)")
    parser.add_argument("--boolq-file", help="local BoolQ JSON lines instead of the hub")
    parser.add_argument("--max-boolq", type=int, help="evaluate only the first N questions (partial)")
    parser.add_argument("--mirror", help="local hub mirror directory (default: $LMFORGE_MIRROR)")
    parser.add_argument("--tasks", help="zero-shot tasks run by lm-evaluation-harness, comma-separated "
                        "(as `lmforge eval --tasks`; overrides zero_shot.tasks)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    parser.add_argument("--force", action="store_true", help="redo even if results are up to date")


def build_config(args) -> EvalSFTConfig:

    overrides = parse_set_overrides(args.set)
    flags = {"pretrain_results": args.pretrain_results, "sft_perplexity.data_dirs": args.data_dirs,
             "boolq.local_file": args.boolq_file, "boolq.max_examples": args.max_boolq}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    apply_tasks_flag(overrides, getattr(args, "tasks", None))
    return load_config(args.config, EvalSFTConfig, overrides)


def describe(args) -> dict[str, str]:
    cfg = build_config(args)
    return {"model": args.model_path, "smoke_cases": str(len(cfg.smoke.cases)),
            "boolq": f"{cfg.boolq.max_examples or 'all'} questions" + (" x2 prompts" if cfg.boolq.chatml_variant else ""),
            "perplexity_data": ", ".join(cfg.sft_perplexity.data_dirs or ["from the model's manifest"])}


def main(args) -> int:
    cfg = build_config(args)
    output_file = Path(args.output_file)
    out = output_file.parent
    config_dict = to_dict(cfg)
    if not cfg.zero_shot.tasks:
        config_dict.pop("zero_shot")  # as before the suite existed: results computed then stay up to date
    config_dict["_mirror"] = str(args.mirror) if args.mirror else None
    config_dict["_output_file"] = output_file.name

    preflight(cfg.zero_shot, resolve_mirror(args.mirror))  # harness installed, task data present: before anything
    if cfg.zero_shot.tasks:
        config_dict["_zero_shot_data"] = data_identity(cfg.zero_shot.tasks, resolve_mirror(args.mirror))
    inputs = {"model": Path(args.model_path), "tokenizer": Path(args.tokenizer_path)}
    plan = StagePlan(STAGE, out, config_dict, inputs, force=args.force,
                     also_writes=(Path(args.model_path),))  # the scores go into the model's card too
    run_stage(plan, lambda p: evaluate_sft(p, cfg, args, output_file))
    return 0


def evaluate_sft(plan: StagePlan, cfg: EvalSFTConfig, args, output_file: Path) -> dict:
    """Load the SFT model, run every enabled part, write results, report and manifest."""
    loaded = load_for_eval(args.model_path, args.tokenizer_path, device=cfg.runtime.device, dtype=cfg.runtime.dtype)
    out = prepare_output_dir(plan.output_dir)
    run = SFTEvalRun(cfg, loaded, args, out)
    results = run.execute()
    manifest = run.write(results, output_file, plan.config, plan.inputs)
    print(closing_summary(results, output_file))
    return manifest


