"""One flag vocabulary: every verb takes `--x-y` and `--x_y`, the tokenizer flags are
synonyms, `--help` shows one spelling, and every command of the plan and the README parses.

The flags are read from the parsers themselves and the commands from the documents, so a
new flag or a new documented command is covered without editing this file.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.cli import COMMANDS, TOKENIZER_FLAGS, build_parser, flag_spellings

ROOT = Path(__file__).resolve().parents[1]
PLAN = Path(os.environ.get("LMFORGE_TEST_PLAN", ROOT.parent / "shared" / "seed" / "test_plan.md"))
VERBS = [v for v in COMMANDS]


# ---------------------------------------------------------------- commands from documents

def script_verbs() -> dict[str, str]:
    """scripts/NN_name.py -> the verb it runs (read from the script, not listed here)."""
    out = {}
    for path in sorted((ROOT / "scripts").glob("*.py")):
        match = re.search(r'main\(\["([\w-]+)"', path.read_text(encoding="utf-8"))
        if match:
            out[f"scripts/{path.name}"] = match.group(1)
    return out


def shell_commands(markdown: str) -> list[str]:
    """Each logical line of each ```bash / ``` block (continuations joined, comments dropped)."""
    commands = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", markdown, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def lmforge_invocation(command: str, scripts: dict[str, str]) -> tuple[str, list[str]] | None:
    """(verb, its arguments) when the line runs lmforge; None for other shell lines."""
    command = re.split(r"\s(?:2>&1|\||>|&&|;)", command)[0]
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    # synopsis notation: `[--flag VALUE]` is an optional flag, `...` more of the same
    words = [w.strip("[]") for w in words if w.strip("[]") not in ("", "...")]
    for i, word in enumerate(words):
        if word in scripts:
            return scripts[word], words[i + 1:]
        if word == "lmforge" and i == 0 and len(words) > 1 and words[1] in COMMANDS:
            return words[1], words[2:]
        if word == "lmforge.cli" and i > 0 and words[i - 1] == "-m" and len(words) > i + 1:
            return words[i + 1], words[i + 2:]
    return None


def documented_commands(path: Path) -> list[tuple[str, list[str]]]:
    scripts = script_verbs()
    found = [lmforge_invocation(c, scripts) for c in shell_commands(path.read_text(encoding="utf-8"))]
    return [f for f in found if f is not None]


def assert_parses(verb: str, argv: list[str], where: str) -> argparse.Namespace:
    _, parser = build_parser(verb)
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:  # argparse rejected a documented command
        pytest.fail(f"{where}: `{verb} {shlex.join(argv)}` does not parse (exit {exc.code})")


def test_every_command_of_the_test_plan_parses():
    if not PLAN.is_file():
        pytest.skip(f"the user's test plan is not at {PLAN} (set LMFORGE_TEST_PLAN)")
    commands = documented_commands(PLAN)
    # the plan runs all nine steps, twice (detailed and TL;DR): a parser that finds
    # nothing must not pass silently
    assert len(commands) >= 18, commands
    assert {verb for verb, _ in commands} >= {"corpus", "tokenizer", "pack", "pretrain", "eval", "sft-data",
                                               "sft", "eval-sft"}
    for verb, argv in commands:
        assert_parses(verb, argv, PLAN.name)


def test_every_command_of_the_readme_and_docs_parses():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    total = 0
    for doc in docs:
        for verb, argv in documented_commands(doc):
            if "--help" in argv or "-h" in argv:
                continue
            assert_parses(verb, argv, doc.name)
            total += 1
    assert total >= 12   # the README alone shows the nine steps


def test_plan_spellings_mixed_within_one_verb():
    """The plan writes `--output-dir` for corpus and `--output_dir` for pretrain; each verb takes both."""
    args = assert_parses("corpus", ["--config", "c.json", "--output_dir", "o", "--use_cache", "--analyze-only"], "mix")
    assert (args.output_dir, args.use_cache, args.analyze_only) == ("o", True, True)
    args = assert_parses("pretrain", ["--config", "c", "--data-dirs", "d", "--tokenizer-path", "t",
                                      "--output-dir", "o", "--max-steps", "7"], "mix")
    assert (args.data_dirs, args.tokenizer_dir, args.output_dir, args.max_steps) == (["d"], "t", "o", 7)


# ---------------------------------------------------------------- every flag, both spellings

def sample_value(action: argparse.Action) -> list[str]:
    """Arguments that this action accepts (from its type, choices and nargs)."""
    if action.nargs == 0:
        return []
    if action.choices:
        word = str(next(iter(action.choices)))
    elif action.type in (int, float):
        word = "3"
    else:
        word = "x=1" if action.metavar == "KEY=VALUE" else "v"
    return [word, word] if action.nargs in ("+", "*") or isinstance(action.nargs, int) and action.nargs > 1 \
        else [word]


def required_argv(parser: argparse.ArgumentParser, skip: argparse.Action) -> list[str]:
    argv: list[str] = []
    for action in parser._actions:
        if action is skip or not action.required:
            continue
        if action.option_strings:
            argv.append(action.option_strings[-1])
        argv += sample_value(action)
    return argv


def long_flags(verb: str):
    _, parser = build_parser(verb)
    for action in parser._actions:
        if any(o.startswith("--") for o in action.option_strings) and not isinstance(action, argparse._HelpAction):
            yield parser, action


@pytest.mark.parametrize("verb", VERBS)
def test_every_flag_parses_in_both_spellings(verb):
    checked = 0
    for parser, action in long_flags(verb):
        canonical = [o for o in action.option_strings if o.startswith("--")]
        assert len(canonical) == 1, (verb, action.option_strings)     # help shows one spelling
        values = sample_value(action)
        for spelling in sorted(flag_spellings(canonical[0])):
            args = parser.parse_args([*required_argv(parser, action), spelling, *values])
            got = getattr(args, action.dest)
            assert got not in (None, False, []), (verb, spelling, got)
        checked += 1
    assert checked >= 2 or verb == "report", verb   # report: a run dir and --log-level


@pytest.mark.parametrize("verb", VERBS)
def test_help_shows_one_kebab_spelling(verb):
    _, parser = build_parser(verb)
    usage = parser.format_usage()
    # the option column of the help (help sentences may quote the plan's spelling)
    options = "\n".join(re.findall(r"^  (-.*?)(?:  |$)", parser.format_help(), flags=re.M))
    assert "--log-level" in options
    for text in (usage, options):
        assert not re.search(r"--[a-z]+_[a-z_]+", text), (verb, re.findall(r"--[a-z]+_[a-z_]+", text))


@pytest.mark.parametrize("verb", [v for v in VERBS if any(
    {*TOKENIZER_FLAGS, "--tokenizer"} & set(a.option_strings) for _, a in long_flags(v))])
def test_tokenizer_flags_are_synonyms(verb):
    _, parser = build_parser(verb)
    action = next(a for a in parser._actions if {*TOKENIZER_FLAGS, "--tokenizer"} & set(a.option_strings))
    for flag in TOKENIZER_FLAGS:
        for spelling in flag_spellings(flag):
            args = parser.parse_args([*required_argv(parser, action), spelling, "tok"])
            assert getattr(args, action.dest) == "tok", (verb, spelling)


def test_scripts_take_both_spellings():
    """scripts/NN_*.py run the same parser: an alias reaches the verb (which then
    fails on the missing config with lmforge's own message, not an argparse usage error)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "30_pack_dataset.py"), "--config", "missing.json",
                           "--corpus_dir", "c", "--tokenizer_path", "t", "--output_dir", "o"],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert "unrecognized" not in proc.stderr and "usage:" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error:"), proc.stderr


def test_a_mistyped_flag_is_named_with_its_likely_spelling(capsys):
    from lmforge.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["pack", "--config", "c.json", "--corpus-dir", "x", "--tokenizer-dirr", "y", "--output-dir", "o"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exited.value.code == 2
    assert "unknown flag --tokenizer-dirr: did you mean --tokenizer-dir?" in err


def test_abbreviations_and_values_are_not_taken_for_mistyped_flags():
    from lmforge.cli import mistyped_flag_hint

    known = ["--max-steps", "--max_steps", "--output-dir", "--set"]
    assert mistyped_flag_hint(["--max-st", "3", "--set", "a.b=--x"], known) == ""
    assert mistyped_flag_hint(["--outptu-dir=o"], known) == " (unknown flag --outptu-dir: did you mean --output-dir?)"
