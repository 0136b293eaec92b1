"""No writes outside the output, one writer per directory,
and leftovers of killed writers cleaned up by the stage that owns them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.artifacts import (atomic_write_json, contained, load_manifest, prepare_output_dir, release_all_locks,
                               remove_stale_temps, safe_name, write_manifest)
from lmforge.cli import main as cli_main
from lmforge.errors import ArtifactError, ConfigError

ARCH = {"name": "micro", "vocab_size": 400, "hidden_size": 64, "num_layers": 2, "num_heads": 2,
        "intermediate_size": 128, "max_position_embeddings": 64}
TRAINING = {"max_steps": 2, "per_device_batch_size": 2, "learning_rate": 1e-3, "warmup_steps": 0, "eval_batches": 1,
            "log_every": 1, "tensorboard": False}


def _pretrain_config(tmp_path: Path, name: str) -> Path:
    atomic_write_json(tmp_path / "arch.json", {**ARCH, "name": name})
    atomic_write_json(tmp_path / "train.json", {"architecture": str(tmp_path / "arch.json"), "training": TRAINING})
    return tmp_path / "train.json"


@pytest.mark.parametrize("name", ["../../victim", "/ABS/victim", "..", "a/b", ""])
def test_architecture_name_cannot_leave_the_output_dir(tmp_path, tiny_tokenizer, tiny_packed, capsys, name):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    name = name.replace("/ABS/victim", str(victim))
    out = tmp_path / "a" / "b" / "out"
    code = cli_main(["pretrain", "--config", str(_pretrain_config(tmp_path, name)), "--data_dirs", str(tiny_packed),
                     "--tokenizer_dir", str(tiny_tokenizer), "--output_dir", str(out), "--force"])
    assert code == 2
    assert "not a valid name" in capsys.readouterr().err
    assert (victim / "precious.txt").read_text() == "keep me" and sorted(os.listdir(victim)) == ["precious.txt"]


def test_names_and_contained_paths():
    assert safe_name("tiny_23M", "name") == "tiny_23M"
    for bad in ("../x", "x/..", "/etc", "a\\b", ".", "..", " x"):
        with pytest.raises(ConfigError):
            safe_name(bad, "name")


def test_manifests_cannot_point_outside_their_directory(tmp_path):
    (tmp_path / "art").mkdir()
    (tmp_path / "secret").write_text("s")
    with pytest.raises(ArtifactError, match="outside"):
        write_manifest(tmp_path / "art", "corpus", config={}, outputs=["../secret"])
    (tmp_path / "art" / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(ArtifactError, match="outside"):
        contained(tmp_path / "art", "link")
    atomic_write_json(tmp_path / "art" / "manifest.json",
                      {"stage": "corpus", "outputs": [{"path": "../secret", "bytes": 1, "sha256": "x"}]})
    with pytest.raises(ArtifactError, match="outside"):
        load_manifest(tmp_path / "art")


def test_pipeline_stage_names_are_file_names(tmp_path):
    from lmforge.pipeline.pipeline_file import load_pipeline

    path = tmp_path / "p.json"
    atomic_write_json(path, {"run_dir": str(tmp_path), "stages": [
        {"name": "ok", "verb": "corpus", "log": "../../escape.log"}]})
    with pytest.raises(ConfigError, match="not a valid name"):
        load_pipeline(path)


# ---------------------------------------------------------------- one writer per directory

HOLDER = """
import sys, time
sys.path.insert(0, {src!r})
from lmforge.artifacts import prepare_output_dir
prepare_output_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""


def _hold_lock(directory: Path) -> subprocess.Popen:
    src = str(Path(__import__("lmforge").__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(src=src), str(directory)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_is_refused_with_the_holders_pid(tmp_path, tiny_tokenizer, tiny_packed, capsys):
    out = tmp_path / "out"
    holder = _hold_lock(out / "micro")
    try:
        with pytest.raises(ArtifactError, match=f"is being written by pid {holder.pid}"):
            prepare_output_dir(out / "micro")
        code = cli_main(["pretrain", "--config", str(_pretrain_config(tmp_path, "micro")), "--data_dirs",
                         str(tiny_packed), "--tokenizer_dir", str(tiny_tokenizer), "--output_dir", str(out)])
        assert code == 2 and f"being written by pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the lock with its holder: no stale lock after kill -9
    prepare_output_dir(out / "micro")
    release_all_locks()


def test_same_process_may_prepare_twice_and_cli_releases(tmp_path):
    prepare_output_dir(tmp_path / "x")
    prepare_output_dir(tmp_path / "x")
    release_all_locks()
    holder = _hold_lock(tmp_path / "x")  # another process can take it once released
    holder.kill()
    holder.wait()


# ---------------------------------------------------------------- leftovers of killed writers

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temps_of_dead_pids_are_removed_live_ones_kept(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".train.bin.tmp-{dead}").write_bytes(b"partial")
    (tmp_path / f".step_10.tmp-{dead}").mkdir()
    (tmp_path / f".step_10.tmp-{dead}" / "model.safetensors").write_bytes(b"partial")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / f".val.bin.tmp-{alive.pid}").write_bytes(b"in progress")
        (tmp_path / "train.bin").write_bytes(b"kept")
        prepare_output_dir(tmp_path)
        left = sorted(os.listdir(tmp_path))
        assert f".train.bin.tmp-{dead}" not in left and f".step_10.tmp-{dead}" not in left
        assert f".val.bin.tmp-{alive.pid}" in left and "train.bin" in left
    finally:
        alive.kill()
        alive.wait()
        release_all_locks()
    assert remove_stale_temps(tmp_path) == [tmp_path / f".val.bin.tmp-{alive.pid}"]
