"""The CLI: overview, unknown verbs, clean errors for user mistakes."""

from __future__ import annotations

import subprocess
import sys

from lmforge.cli import COMMANDS, main


def test_overview_lists_every_verb(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(verb in out for verb in COMMANDS)


def test_unknown_verb_suggests_and_fails(capsys):
    assert main(["corpos"]) == 2
    assert "did you mean 'corpus'" in capsys.readouterr().err


def test_every_verb_module_exists_and_has_help():
    for verb in COMMANDS:
        proc = subprocess.run([sys.executable, "-m", "lmforge.cli", verb, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0, (verb, proc.stderr[-500:])
        assert "--log-level" in proc.stdout
