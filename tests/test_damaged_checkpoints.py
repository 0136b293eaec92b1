"""Damaged checkpoints give one error line, and the reported
final loss survives a resume.

A run is trained once (module fixture) with a checkpoint every step; each test works
on a copy, damages one file the way a kill or a full disk would, and resumes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lmforge.artifacts import atomic_write_json
from lmforge.cli import main as cli_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ARCH = {"name": "micro", "vocab_size": 400, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 64}
TRAINING = {"max_steps": 4, "per_device_batch_size": 2, "learning_rate": 3e-3, "warmup_steps": 0, "eval_batches": 1,
            "save_every": 1, "log_every": 4, "tensorboard": False}


def _pretrain(cfg_dir: Path, out: Path, packed, tokenizer, *extra: str) -> int:
    atomic_write_json(cfg_dir / "arch.json", ARCH)
    atomic_write_json(cfg_dir / "train.json", {"architecture": str(cfg_dir / "arch.json"), "training": TRAINING})
    return cli_main(["pretrain", "--config", str(cfg_dir / "train.json"), "--data_dirs", str(packed),
                     "--tokenizer_dir", str(tokenizer), "--output_dir", str(out), *extra])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_packed, tiny_tokenizer) -> Path:
    """An uninterrupted 4-step run: step_1..step_4 and final/."""
    root = tmp_path_factory.mktemp("full")
    assert _pretrain(root, root / "out", tiny_packed, tiny_tokenizer) == 0
    return root / "out" / "micro"


@pytest.fixture
def resume(full_run, tiny_packed, tiny_tokenizer):
    """Rerun the same command (same config files, so the same run identity) into `out`."""
    return lambda out: _pretrain(full_run.parent.parent, out, tiny_packed, tiny_tokenizer)


def _interrupted_copy(full_run: Path, tmp_path: Path, keep_steps: int) -> Path:
    """The run as if killed right after step_{keep_steps} was saved."""
    run = tmp_path / "out" / "micro"
    shutil.copytree(full_run, run, ignore=shutil.ignore_patterns(".lmforge*"))
    shutil.rmtree(run / "final")
    for n in range(keep_steps + 1, 5):
        shutil.rmtree(run / f"step_{n}")
    return run


def _final_loss(run: Path) -> float:
    return json.loads((run / "final" / "manifest.json").read_text())["figures"]["final_loss"]


def _resume_error(tmp_path, resume, capsys) -> str:
    assert resume(tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt"])
def test_truncated_checkpoint_file_is_one_error_line(full_run, tmp_path, resume, capsys, name):
    run = _interrupted_copy(full_run, tmp_path, keep_steps=2)
    data = (run / "step_2" / name).read_bytes()
    (run / "step_2" / name).write_bytes(data[: len(data) // 2])
    line = _resume_error(tmp_path, resume, capsys)
    assert "step_2 is damaged" in line and name in line


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt"])
def test_garbled_checkpoint_file_of_the_right_size_is_one_error_line(full_run, tmp_path, resume, capsys, name):
    run = _interrupted_copy(full_run, tmp_path, keep_steps=2)
    path = run / "step_2" / name
    path.write_bytes(b"\xff" * 64 + path.read_bytes()[64:])
    line = _resume_error(tmp_path, resume, capsys)
    assert "step_2 is damaged" in line


def test_torn_last_metrics_line_is_dropped_on_resume(full_run, tmp_path, resume):
    run = _interrupted_copy(full_run, tmp_path, keep_steps=2)
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 3, "loss": 5.1')  # killed mid-write
    assert resume(tmp_path / "out") == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [4]


@pytest.mark.parametrize("keep_steps", [2, 4])
def test_final_loss_is_the_same_after_resume(full_run, tmp_path, resume, keep_steps):
    """Killed after step_2 (window spans the resume) or after the last step_4 (nothing left to train)."""
    run = _interrupted_copy(full_run, tmp_path, keep_steps)
    assert resume(tmp_path / "out") == 0
    assert _final_loss(full_run) is not None
    assert _final_loss(run) == pytest.approx(_final_loss(full_run), rel=1e-6)


def test_eval_refuses_a_broken_safetensors_header_in_one_line(full_run, tmp_path, tiny_tokenizer):
    from lmforge.errors import ArtifactError
    from lmforge.model.loading import load_for_eval

    model = tmp_path / "final"
    shutil.copytree(full_run / "final", model, ignore=shutil.ignore_patterns(".lmforge*"))
    path = model / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:40] = b"{ not json at all !!!!!!!!!!!!!!"
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="cannot load the model") as info:
        load_for_eval(model, tiny_tokenizer, device="cpu")
    assert "\n" not in str(info.value)
