"""The `lmforge` command: one verb per stage.

Verbs are imported lazily, so `lmforge corpus --help` does not pay for importing
torch. Each verb's module provides `add_arguments(parser)` and `main(args) -> int`.
User mistakes (`LmforgeError`) end with one message and exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys

from . import __version__
from .errors import LmforgeError
from .log import LOG_LEVELS, setup_logging

# verb -> (module, one-line help). Order is the pipeline's order.
COMMANDS: dict[str, tuple[str, str]] = {
    "corpus": ("lmforge.stages.corpus", "steps 1 and 3: stream sources, clean, budget, dedup, shard a text corpus"),
    "tokenizer": ("lmforge.stages.tokenizer", "step 2: train a SentencePiece tokenizer on a corpus"),
    "pack": ("lmforge.stages.pack", "step 4: tokenize a corpus and pack fixed-length sequences (.bin/.idx)"),
    "pretrain": ("lmforge.stages.pretrain", "step 5: pretrain a decoder with accelerate"),
    "eval": ("lmforge.stages.evaluate", "step 6: WikiText-2 perplexity, BoolQ, generations"),
    "sft-data": ("lmforge.stages.sft_data", "step 7: build ChatML SFT data with loss masks"),
    "sft": ("lmforge.stages.sft", "step 8: LoRA fine-tuning on weighted SFT datasets"),
    "eval-sft": ("lmforge.stages.eval_sft", "step 9: SFT perplexity, BoolQ, smoke tests"),
    "chat": ("lmforge.chat", "interactive ChatML chat with a model"),
    "verify": ("lmforge.verify", "check tokenizer lineage across run directories"),
    "run": ("lmforge.pipeline", "run a whole pipeline file, skipping up-to-date stages"),
    "report": ("lmforge.report", "regenerate REPORT.md for a pipeline run directory"),
}


def _overview() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"lmforge {__version__}: raw text to an evaluated small chat model", "",
             "usage: lmforge VERB [options]    (lmforge VERB --help for a verb's options)", "", "verbs:"]
    lines += [f"  {verb:<{width}}  {help_}" for verb, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def build_parser(verb: str):
    """Import a verb's module and return (module, parser)."""
    module_name, help_ = COMMANDS[verb]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"lmforge {verb}", description=(module.__doc__ or help_).strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    if not any("--log-level" in a.option_strings for a in parser._actions):
        parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                            help="logging verbosity (default: INFO)")
    return module, parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_overview())
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in COMMANDS:
        close = difflib.get_close_matches(verb, list(COMMANDS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"lmforge: unknown verb '{verb}'{hint}\n\n{_overview()}", file=sys.stderr)
        return 2
    if os.environ.get("LMFORGE_DIE_WITH_PARENT") == "1":  # started by `lmforge run`, maybe via a launcher
        from .pipeline import set_parent_death_signal

        set_parent_death_signal()
    module, parser = build_parser(verb)
    args = parser.parse_args(rest)
    setup_logging(args.log_level)
    try:
        return int(module.main(args) or 0)
    except LmforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        from .artifacts import release_all_locks

        release_all_locks()  # a verb called in-process (tests, the Python API) leaves no lock behind


if __name__ == "__main__":
    sys.exit(main())
