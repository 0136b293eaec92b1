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
import traceback

from lmforge import __version__
from lmforge.artifacts import release_all_locks
from lmforge.errors import LmforgeError
from lmforge.log import LOG_LEVELS, get_logger, setup_logging
from lmforge.pipeline.processes import DIE_WITH_PARENT, set_parent_death_signal

BUG_POINTER = ("\nThis is a bug in lmforge {version} (`lmforge {verb}`), not a problem with your data or "
               "config. Please report it with the traceback above and the command you ran.")

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
    "chat": ("lmforge.model.chat", "interactive ChatML chat with a model"),
    "export": ("lmforge.model.gguf_export", "export a model for llama.cpp / Ollama (GGUF, f16 or q8_0)"),
    "relink-adapter": ("lmforge.model.relink", "after a move: point a LoRA adapter at its base again (for PEFT)"),
    "verify": ("lmforge.pipeline.verify", "check tokenizer lineage across run directories"),
    "run": ("lmforge.pipeline.run", "run a whole pipeline file, skipping up-to-date stages"),
    "report": ("lmforge.pipeline.report", "regenerate REPORT.md for a pipeline run directory"),
}


# Verbs whose imports (torch, transformers, accelerate) take seconds before their first
# line: they say so at once, so a slow start does not look like a hang.
SLOW_START = {"pretrain": "training", "sft": "training"}


def _overview() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"lmforge {__version__}: raw text to an evaluated small chat model", "",
             "usage: lmforge VERB [options]    (lmforge VERB --help for a verb's options)", "", "verbs:"]
    lines += [f"  {verb:<{width}}  {help_}" for verb, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


# Flags naming the same thing in different verbs: one accepts the others' spellings.
TOKENIZER_FLAGS = ("--tokenizer-dir", "--tokenizer-path")


class Parser(argparse.ArgumentParser):
    """argparse, where a prefix matching several spellings of ONE flag is not ambiguous, and an
    error names a mistyped flag with its likely spelling (argparse would only say which required
    flag is missing, or list the unrecognised words)."""

    def _get_option_tuples(self, option_string):  # noqa: ANN001 - argparse's own signature
        tuples, seen = [], set()
        for item in super()._get_option_tuples(option_string):
            if id(item[0]) not in seen:
                seen.add(id(item[0]))
                tuples.append(item)
        return tuples

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001 - argparse's own signature
        self._given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):  # noqa: ANN201 - exits
        super().error(message + mistyped_flag_hint(getattr(self, "_given", []), list(self._option_string_actions)))


def mistyped_flag_hint(given: list[str], known: list[str]) -> str:
    """' (unknown flag --x: did you mean --y?)' for the first given flag argparse does not know."""
    for token in given:
        name = token.split("=", 1)[0]
        if not name.startswith("--") or name in known or any(k.startswith(name) for k in known):
            continue  # a value, a known flag, or an abbreviation argparse accepts
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.7)
        return f" (unknown flag {name}" + (f": did you mean {_kebab(close[0])}?)" if close else ")")
    return ""


def _kebab(option: str) -> str:
    return "--" + option[2:].replace("_", "-")


def flag_spellings(option: str) -> set[str]:
    """`--x-y` and `--x_y` for a long option."""
    kebab = _kebab(option)
    return {kebab, "--" + kebab[2:].replace("-", "_")}


def add_flag_aliases(parser: argparse.ArgumentParser) -> None:
    """One flag vocabulary for every verb, applied after the verb declared its flags.

    Each long option is accepted as `--x-y` and `--x_y`; the tokenizer flags
    (`--tokenizer-dir`, `--tokenizer-path`, verify's `--tokenizer`) accept each other's
    names. `--help` lists one canonical kebab-case spelling; the rest are hidden aliases
    registered on the same action, so they parse into the same `dest`.
    """
    for action in list(parser._actions):
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs:
            continue
        canonical = _kebab(longs[0])
        names = {_kebab(o) for o in longs}
        if names & {*TOKENIZER_FLAGS, "--tokenizer"}:
            names |= set(TOKENIZER_FLAGS)
        for name in sorted(names):
            for spelling in flag_spellings(name):
                # never steal a spelling another flag of this verb already owns
                parser._option_string_actions.setdefault(spelling, action)
        action.option_strings = [o for o in action.option_strings if not o.startswith("--")] + [canonical]


def build_parser(verb: str):
    """Import a verb's module and return (module, parser)."""
    module_name, help_ = COMMANDS[verb]
    module = importlib.import_module(module_name)
    parser = Parser(prog=f"lmforge {verb}", description=(module.__doc__ or help_).strip(),
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    if not any(a.dest == "log_level" for a in parser._actions):
        parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                            help="logging verbosity (default: INFO)")
    add_flag_aliases(parser)
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
    if os.environ.get(DIE_WITH_PARENT) == "1":  # started by `lmforge run`, maybe via a launcher
        set_parent_death_signal()
    module, parser = build_parser(verb)
    args = parser.parse_args(rest)
    setup_logging(args.log_level)
    if verb in SLOW_START and os.environ.get("LOCAL_RANK", "0") == "0":
        get_logger(__name__).info("lmforge %s: loading torch, transformers and accelerate before %s starts",
                                  verb, SLOW_START[verb])
    try:
        return int(module.main(args) or 0)
    except LmforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # not a user mistake (those are LmforgeError): a bug, shown in full
        traceback.print_exc()
        print(BUG_POINTER.format(version=__version__, verb=verb), file=sys.stderr)
        return 70  # EX_SOFTWARE
    finally:
        release_all_locks()  # a verb called in-process (tests, the Python API) leaves no lock behind


if __name__ == "__main__":
    sys.exit(main())
