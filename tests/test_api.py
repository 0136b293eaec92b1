"""The Python API: `from lmforge import run_pipeline, load_model, reply`, lazily imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_import_lmforge_stays_cheap():
    code = ("import sys, lmforge; assert 'torch' not in sys.modules and 'transformers' not in sys.modules; "
            "from lmforge import run_pipeline, load_model, reply; assert callable(reply); "
            "assert 'torch' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_unknown_name_is_an_attribute_error():
    import lmforge

    with pytest.raises(AttributeError):
        lmforge.no_such_thing


def test_load_model_and_reply_match_the_chat_command(tiny_base_model):
    from lmforge import load_model, reply
    from lmforge.model.chat import Sampling, generate_reply

    model, tok = load_model(tiny_base_model)
    text = reply(model, tok, "Hello there", max_new_tokens=6)
    expected = generate_reply(model, tok, [{"role": "user", "content": "Hello there"}],
                              Sampling(max_new_tokens=6, temperature=0.0))
    assert isinstance(text, str) and text == expected.text and expected.ids


def test_load_model_refuses_a_non_model_dir(tmp_path):
    from lmforge import load_model
    from lmforge.errors import LmforgeError

    with pytest.raises(LmforgeError, match="not a model directory"):
        load_model(tmp_path)


def test_run_pipeline_dry_run(tmp_path, capsys):
    from lmforge import run_pipeline

    code = run_pipeline(ROOT / "config/quickstart/pipeline.json", run_dir=tmp_path / "run", dry_run=True)
    assert code == 0
    out = capsys.readouterr().out
    assert "pretrain" in out and "sft" in out and not (tmp_path / "run" / "checkpoints").exists()
