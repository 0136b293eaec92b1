"""Atomic writes, manifests, verification and lineage checks."""

from __future__ import annotations

import json
import os

import pytest

from lmforge.artifacts import (MANIFEST_NAME, atomic_open, atomic_write_json, check_tokenizer_lineage,
                               is_up_to_date, load_manifest, prepare_output_dir, sha256_file, sha256_json,
                               verify_file, write_manifest)
from lmforge.errors import ArtifactError, LineageError


def test_atomic_open_leaves_old_file_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as handle:
            handle.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]  # no temp file left behind


def test_manifest_lists_hashes_and_is_written_last(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"abc")
    manifest = write_manifest(tmp_path, "pack", config={"x": 1}, outputs=["a.bin"], figures={"n": 3},
                              tokenizer_sha256="f" * 64)
    assert manifest["outputs"] == [{"path": "a.bin", "bytes": 3, "sha256": sha256_file(tmp_path / "a.bin")}]
    on_disk = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert on_disk["tokenizer_sha256"] == "f" * 64 and on_disk["config_sha256"] == sha256_json({"x": 1})
    assert load_manifest(tmp_path, "pack")["figures"] == {"n": 3}


def test_missing_output_refuses_to_write_manifest(tmp_path):
    with pytest.raises(ArtifactError, match="was not written"):
        write_manifest(tmp_path, "pack", config={}, outputs=["nope.bin"])
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_load_manifest_detects_incomplete_truncated_and_corrupted(tmp_path):
    with pytest.raises(ArtifactError, match="has no manifest.json"):
        load_manifest(tmp_path)
    (tmp_path / "a.bin").write_bytes(b"abcd")
    write_manifest(tmp_path, "corpus", config={}, outputs=["a.bin"])
    with pytest.raises(ArtifactError, match="expected pack"):
        load_manifest(tmp_path, "pack")
    (tmp_path / "a.bin").write_bytes(b"abce")  # same size, other bytes
    load_manifest(tmp_path, "corpus", verify="size")
    with pytest.raises(ArtifactError, match="fails its sha256"):
        load_manifest(tmp_path, "corpus", verify="sha256")
    with pytest.raises(ArtifactError, match="fails its sha256"):
        verify_file(tmp_path, load_manifest(tmp_path, verify="none"), "a.bin")
    (tmp_path / "a.bin").write_bytes(b"ab")
    with pytest.raises(ArtifactError, match="truncated"):
        load_manifest(tmp_path)


def test_prepare_output_dir_drops_stale_manifest_and_rejects_unwritable(tmp_path):
    atomic_write_json(tmp_path / MANIFEST_NAME, {"stage": "x"})
    prepare_output_dir(tmp_path)
    assert not (tmp_path / MANIFEST_NAME).exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ArtifactError, match="not writable"):
        prepare_output_dir(blocker / "sub")


def test_up_to_date_tracks_config_and_inputs(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    (src / "s").write_text("1")
    write_manifest(src, "corpus", config={}, outputs=["s"])
    (out / "o").write_text("2")
    write_manifest(out, "pack", config={"k": 1}, outputs=["o"], inputs={"corpus": src})
    assert is_up_to_date(out, "pack", {"k": 1}, {"corpus": src})
    assert not is_up_to_date(out, "pack", {"k": 2}, {"corpus": src})
    write_manifest(src, "corpus", config={"changed": True}, outputs=["s"])
    assert not is_up_to_date(out, "pack", {"k": 1}, {"corpus": src})


def test_lineage_mismatch_names_both_sides():
    check_tokenizer_lineage("a" * 64, "tok", "a" * 64, "pack")
    with pytest.raises(LineageError) as err:
        check_tokenizer_lineage("a" * 64, "tokenizer dir", "b" * 64, "pack manifest")
    assert "a" * 64 in str(err.value) and "b" * 64 in str(err.value) and "pack manifest" in str(err.value)
    with pytest.raises(LineageError, match="records no tokenizer_sha256"):
        check_tokenizer_lineage("a" * 64, "tok", None, "old artifact")
