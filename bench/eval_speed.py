"""Wall time of the full step-6 evaluation (WikiText-2 + BoolQ) of an architecture.

    python bench/eval_speed.py --tokenizer data/models/tokenizers/spm_32k
    python bench/eval_speed.py --tokenizer DIR --max-wikitext-docs 5 --max-boolq 200   # quick

Builds a randomly initialised model of `--arch` (default config/architectures/tiny.json;
weights do not change the amount of work), saves it as `lmforge pretrain` would
(final/ with the tokenizer files and a manifest), then runs the real `lmforge eval` on
the hub data (read from the mirror) and prints the time of each part. Generations
are off: they depend on the prompts, not on the data sets.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


def build_checkpoint(arch_path: str, tokenizer: Path, out: Path) -> Path:
    from lmforge.artifacts import write_manifest
    from lmforge.training.checkpoint import save_model
    from lmforge.model.architecture import build_model, load_architecture
    from lmforge.tokenizer.spm import copy_tokenizer_files, load_tokenizer

    tok = load_tokenizer(tokenizer)
    model = build_model(load_architecture(arch_path), tok.vocab_size)
    out.mkdir(parents=True)
    files = save_model(model, out) + copy_tokenizer_files(tokenizer, out)
    write_manifest(out, "pretrain", config={"bench": arch_path}, outputs=files, tokenizer_sha256=tok.sha256)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="tokenizer artifact (the plan's is 32,768 tokens)")
    parser.add_argument("--arch", default=str(HERE.parent / "config/architectures/tiny.json"))
    parser.add_argument("--mirror", default=str(HERE.parents[1] / "shared" / "mirror"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-wikitext-docs", type=int)
    parser.add_argument("--max-boolq", type=int)
    args = parser.parse_args()

    from lmforge.cli import main as cli_main

    with tempfile.TemporaryDirectory(prefix="lmforge_eval_bench_") as tmp:
        model = build_checkpoint(args.arch, Path(args.tokenizer), Path(tmp) / "final")
        out = Path(tmp) / "eval"
        argv = ["eval", "--model_path", str(model), "--tokenizer_path", args.tokenizer, "--output_dir", str(out),
                "--mirror", args.mirror, "--device", args.device, "--batch-size", str(args.batch_size),
                "--set", "generation.enabled=false", "--log-level", "WARNING"]
        argv += ["--max-wikitext-docs", str(args.max_wikitext_docs)] if args.max_wikitext_docs else []
        argv += ["--max-boolq", str(args.max_boolq)] if args.max_boolq else []
        start = time.perf_counter()
        rc = cli_main(argv)
        total = time.perf_counter() - start
        if rc:
            return rc
        results = json.loads((out / "results.json").read_text())
    wt, bq = results["wikitext"], results["boolq"]
    print(json.dumps({
        "arch": args.arch, "device": results["device"], "dtype": results["dtype"], "batch_size": args.batch_size,
        "wikitext_documents": wt["documents"], "wikitext_tokens": wt["tokens"], "wikitext_seconds": wt["seconds"],
        "wikitext_tokens_per_s": round(wt["tokens"] / wt["seconds"]), "boolq_questions": bq["examples"],
        "boolq_seconds": bq["seconds"], "eval_seconds": results["wall_seconds"],
        "total_seconds_with_model_load": round(total, 1), "partial": results["partial"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
