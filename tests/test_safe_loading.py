"""lmforge never runs code from a model folder and never unpickles weights.

A model directory with an unknown `model_type` and an `auto_map` once made `lmforge chat`
ask "Do you wish to run the custom code?" (and run it on "y"); without a terminal, chat
and sft ended in an EOFError traceback. Every loader now refuses such folders, and
pickle-only weights, with one error line and exit 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.artifacts import write_manifest
from lmforge.errors import ArtifactError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[1]
SRC = Path(__import__("lmforge").__file__).resolve().parents[1]  # the lmforge under test


def _evil_dir(tmp_path: Path, model_type: str = "lmforge_evil") -> tuple[Path, Path]:
    """A model folder whose config asks transformers to import evil.py (which leaves a marker)."""
    model = tmp_path / "evil_model"
    model.mkdir()
    marker = tmp_path / "CODE_RAN"
    (model / "config.json").write_text(json.dumps({
        "model_type": model_type, "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}}))
    (model / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n"
                                   "from transformers import PretrainedConfig\n"
                                   "class EvilConfig(PretrainedConfig):\n    model_type = 'lmforge_evil'\n")
    return model, marker


def _cli(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "lmforge.cli", *argv], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=180, cwd=REPO)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "EOFError" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    return errors[0]


def test_chat_refuses_custom_code_without_prompt_or_traceback(tmp_path, tiny_tokenizer):
    model, marker = _evil_dir(tmp_path)
    proc = _cli("chat", "--model_path", str(model), "--tokenizer_path", str(tiny_tokenizer))
    line = _one_error_line(proc)
    assert "custom code" in line or "never executes" in line
    assert "Do you wish" not in proc.stdout + proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize("model_type", ["lmforge_evil", "llama"])
def test_every_loader_refuses_auto_map(tmp_path, model_type):
    from lmforge.model.loading import load_causal_lm
    from lmforge.stages.sft import LoraSettings, build_lora_model

    model, marker = _evil_dir(tmp_path, model_type)
    with pytest.raises(ArtifactError, match="never executes"):
        load_causal_lm(model)
    with pytest.raises(ArtifactError, match="never executes"):
        build_lora_model(str(model), LoraSettings())
    assert not marker.exists()


def test_unknown_architecture_is_refused(tmp_path):
    from lmforge.model.loading import load_causal_lm

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "not_a_real_arch"}))
    with pytest.raises(ArtifactError, match="unknown architecture"):
        load_causal_lm(tmp_path)


@pytest.fixture(scope="module")
def pickle_only_model(tmp_path_factory, tiny_base_model) -> Path:
    """The tiny base model re-saved as a pickle pytorch_model.bin (no safetensors)."""
    import torch
    from safetensors.torch import load_file

    out = tmp_path_factory.mktemp("pickle_model")
    torch.save(load_file(Path(tiny_base_model) / "model.safetensors"), out / "pytorch_model.bin")
    for f in Path(tiny_base_model).iterdir():
        if f.name not in ("model.safetensors", "manifest.json") and f.is_file():
            (out / f.name).write_bytes(f.read_bytes())
    recorded = json.loads((Path(tiny_base_model) / "manifest.json").read_text())
    write_manifest(out, "pretrain", config={"fixture": True}, outputs=sorted(p.name for p in out.iterdir()),
                   tokenizer_sha256=recorded["tokenizer_sha256"])
    assert (out / "pytorch_model.bin").is_file() and not (out / "model.safetensors").exists()
    return out


def test_pickle_weights_are_refused_by_every_loader(pickle_only_model, tiny_tokenizer):
    from lmforge.model.loading import load_causal_lm, load_for_eval
    from lmforge.stages.sft import LoraSettings, build_lora_model

    for load in (lambda: load_causal_lm(pickle_only_model), lambda: build_lora_model(str(pickle_only_model), LoraSettings()),
                 lambda: load_for_eval(pickle_only_model, tiny_tokenizer, device="cpu")):
        with pytest.raises(ArtifactError, match="safetensors only"):
            load()
    line = _one_error_line(_cli("chat", "--model_path", str(pickle_only_model), "--tokenizer_path", str(tiny_tokenizer)))
    assert "pickle" in line


def test_safe_model_still_loads(tiny_base_model):
    from lmforge.model.loading import load_causal_lm

    model = load_causal_lm(tiny_base_model)
    assert model.config.model_type == "llama"
