"""Signals: `lmforge run` passes SIGTERM and SIGINT on to its stage and records
the outcome; a stage dies with its runner (even on kill -9); SIGTERM during training saves
a checkpoint at the next step boundary and exits with one clear line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmforge.artifacts import atomic_write_json

SRC = Path(__import__("lmforge").__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

STAGE = """
import os, signal, sys, time
from pathlib import Path
here = Path(sys.argv[0]).parent
def on_term(signum, frame):
    (here / "stage_got").write_text(signal.Signals(signum).name)
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
(here / "stage_pid").write_text(str(os.getpid()))
print("stage started", flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited


def _wait_for(path: Path, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while not path.exists() or not path.stat().st_size:  # written, not just created
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _start_runner(tmp_path: Path) -> subprocess.Popen:
    (tmp_path / "stage.py").write_text(STAGE)
    atomic_write_json(tmp_path / "p.json", {"run_dir": str(tmp_path / "run"), "stages": [
        {"name": "slow", "verb": "corpus", "script": str(tmp_path / "stage.py")}]})
    proc = subprocess.Popen([sys.executable, "-m", "lmforge.cli", "run", str(tmp_path / "p.json"), "--no-report"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    _wait_for(tmp_path / "stage_pid")
    return proc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc")
def test_runner_forwards_sigterm_and_records_it(tmp_path):
    runner = _start_runner(tmp_path)
    stage_pid = int((tmp_path / "stage_pid").read_text())
    runner.send_signal(signal.SIGTERM)
    out, err = runner.communicate(timeout=60)
    assert runner.returncode == 143, err
    assert (tmp_path / "stage_got").read_text() == "SIGTERM"
    assert not _alive(stage_pid)
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "SIGTERM received during stage 'slow'" in errors[0]
    entry = json.loads((tmp_path / "run" / "pipeline_run.json").read_text())["stages"]["slow"]
    assert entry["status"] == "interrupted" and entry["signal"] == "SIGTERM" and entry["exit_code"] == 143


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_stage_dies_with_a_runner_killed_by_sigkill(tmp_path):
    runner = _start_runner(tmp_path)
    stage_pid = int((tmp_path / "stage_pid").read_text())
    runner.kill()  # what a timeout or the OOM killer does: no chance to forward anything
    runner.wait(timeout=30)
    _wait_for(tmp_path / "stage_got", 30)  # the parent-death signal reached the stage
    assert (tmp_path / "stage_got").read_text() == "SIGTERM"
    deadline = time.time() + 30
    while _alive(stage_pid):
        assert time.time() < deadline, "the stage outlived its runner"
        time.sleep(0.05)


ARCH = {"name": "micro", "vocab_size": 400, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 64}


def test_sigterm_during_training_saves_a_checkpoint_and_says_so(tmp_path, tiny_tokenizer, tiny_packed):
    from lmforge.training.checkpoint import latest_checkpoint, load_meta

    atomic_write_json(tmp_path / "arch.json", ARCH)
    atomic_write_json(tmp_path / "t.json", {"architecture": str(tmp_path / "arch.json"), "training": {
        "max_steps": 100000, "per_device_batch_size": 2, "learning_rate": 1e-3, "warmup_steps": 0,
        "eval_batches": 1, "log_every": 1, "tensorboard": False}})
    run = tmp_path / "out" / "micro"
    proc = subprocess.Popen([sys.executable, "-m", "lmforge.cli", "pretrain", "--config", str(tmp_path / "t.json"),
                             "--data_dirs", str(tiny_packed), "--tokenizer_dir", str(tiny_tokenizer),
                             "--output_dir", str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    _wait_for(run / "metrics.jsonl", 120)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "stopped by SIGTERM after step" in errors[0], err[-2000:]
    ckpt = latest_checkpoint(run)
    assert ckpt is not None and str(ckpt) in errors[0]
    assert load_meta(ckpt)["step"] >= 1 and not (run / "final").exists()


def _pretrain_cmd(tmp_path: Path, tiny_tokenizer: Path, tiny_packed: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lmforge.cli", "pretrain", "--config", str(tmp_path / "t.json"),
            "--data_dirs", str(tiny_packed), "--tokenizer_dir", str(tiny_tokenizer),
            "--output_dir", str(tmp_path / "out"), *extra]


def test_ctrl_c_during_training_saves_a_checkpoint_and_the_same_command_resumes(tmp_path, tiny_tokenizer,
                                                                                 tiny_packed):
    """SIGINT (Ctrl-C) stops at a step boundary with a checkpoint, like SIGTERM; a rerun
    of the same command (time-sliced with --stop_after_steps, which is not part of the run's identity)
    continues from that checkpoint instead of starting over."""
    from lmforge.training.checkpoint import latest_checkpoint, load_meta

    atomic_write_json(tmp_path / "arch.json", ARCH)
    atomic_write_json(tmp_path / "t.json", {"architecture": str(tmp_path / "arch.json"), "training": {
        "max_steps": 100000, "per_device_batch_size": 2, "learning_rate": 1e-3, "warmup_steps": 0,
        "eval_batches": 1, "log_every": 1, "save_every": 0, "tensorboard": False}})
    run = tmp_path / "out" / "micro"
    proc = subprocess.Popen(_pretrain_cmd(tmp_path, tiny_tokenizer, tiny_packed), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    _wait_for(run / "metrics.jsonl", 120)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "press Ctrl-C again to abort" in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "stopped by SIGINT (Ctrl-C) after step" in errors[0], err[-2000:]
    ckpt = latest_checkpoint(run)
    assert ckpt is not None and str(ckpt) in errors[0] and not (run / "final").exists()
    stopped_at = load_meta(ckpt)["step"]
    assert stopped_at >= 1

    again = subprocess.run(_pretrain_cmd(tmp_path, tiny_tokenizer, tiny_packed, "--stop_after_steps",
                                         str(stopped_at + 2)), capture_output=True, text=True, env=ENV, timeout=300,
                           check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resumed from {ckpt}: step {stopped_at}" in again.stderr
    assert load_meta(latest_checkpoint(run))["step"] == stopped_at + 2
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line) and "eval_loss" not in json.loads(line)]
    assert steps == list(range(1, stopped_at + 3))  # continued where it stopped: no step redone, none lost


def test_a_second_ctrl_c_aborts_at_once():
    """The first Ctrl-C only asks for a checkpoint; a second one raises KeyboardInterrupt right away
    and gives back the handlers that were there before."""
    from lmforge.training.checkpoint import TerminationRequest

    before = signal.getsignal(signal.SIGINT)
    request = TerminationRequest().install()
    assert signal.getsignal(signal.SIGINT) == request._handle
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.01)  # the handler runs in the main thread at the next bytecode
    assert request.signum == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is before and signal.getsignal(signal.SIGTERM) is not request._handle
