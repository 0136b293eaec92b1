"""Inputs are checked by content, not just by size.

Packed files and tokenizer files are hashed on first use against their manifest (the
result cached by size/mtime/inode, so a rerun does not rehash), token ids are
range-checked when a pack is opened, `lmforge verify` checks output hashes, and a
tokenizer folder without its manifest is refused by every stage that reads it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import make_packed_dir
from lmforge import artifacts
from lmforge.artifacts import atomic_write_json, sha256_file, write_manifest
from lmforge.cli import main as cli_main
from lmforge.errors import ArtifactError

REPO = Path(__file__).resolve().parents[1]
ARCH = {"name": "micro", "vocab_size": 400, "hidden_size": 64, "num_layers": 2, "num_heads": 2,
        "intermediate_size": 128, "max_position_embeddings": 64}
TRAINING = {"max_steps": 2, "per_device_batch_size": 2, "learning_rate": 1e-3, "warmup_steps": 0, "eval_batches": 1,
            "log_every": 1, "tensorboard": False}


def _config(tmp_path: Path) -> Path:
    atomic_write_json(tmp_path / "arch.json", ARCH)
    atomic_write_json(tmp_path / "train.json", {"architecture": str(tmp_path / "arch.json"), "training": TRAINING})
    return tmp_path / "train.json"


def _pretrain(tmp_path, packed, tokenizer) -> int:
    return cli_main(["pretrain", "--config", str(_config(tmp_path)), "--data_dirs", str(packed),
                     "--tokenizer_dir", str(tokenizer), "--output_dir", str(tmp_path / "ckpt")])


@pytest.fixture
def packed_copy(tmp_path, tiny_packed) -> Path:
    dest = tmp_path / "packed"
    shutil.copytree(tiny_packed, dest, ignore=shutil.ignore_patterns(".lmforge*"))
    return dest


def test_pretrain_refuses_flipped_bytes_in_train_bin(tmp_path, packed_copy, tiny_tokenizer, capsys):
    data = bytearray((packed_copy / "train.bin").read_bytes())
    data[100] ^= 0x01  # same size: only a content check sees it
    (packed_copy / "train.bin").write_bytes(bytes(data))
    assert _pretrain(tmp_path, packed_copy, tiny_tokenizer) == 2
    err = capsys.readouterr().err
    assert "train.bin fails its sha256" in err and "Traceback" not in err
    assert not (tmp_path / "ckpt").exists()


def test_edited_output_hash_in_manifest_is_caught_by_pretrain_and_verify(tmp_path, packed_copy, tiny_tokenizer,
                                                                        capsys):
    manifest = json.loads((packed_copy / "manifest.json").read_text())
    manifest["outputs"][0]["sha256"] = "0" * 64
    atomic_write_json(packed_copy / "manifest.json", manifest)
    assert _pretrain(tmp_path, packed_copy, tiny_tokenizer) == 2
    assert "fails its sha256" in capsys.readouterr().err
    assert cli_main(["verify", str(packed_copy), "--tokenizer", str(tiny_tokenizer)]) == 1
    assert "CORRUPT" in capsys.readouterr().out


def test_verify_passes_intact_outputs(tmp_path, packed_copy, tiny_tokenizer, capsys):
    assert cli_main(["verify", str(packed_copy), "--tokenizer", str(tiny_tokenizer)]) == 0


def test_sha256_is_cached_by_size_mtime_inode(packed_copy, monkeypatch):
    from lmforge.data.packed import load_packed_manifest

    calls: list[str] = []
    real = artifacts.sha256_file
    monkeypatch.setattr(artifacts, "sha256_file", lambda p: calls.append(Path(p).name) or real(p))
    load_packed_manifest(packed_copy)
    assert sorted(calls) == ["train.bin", "train.idx", "val.bin", "val.idx"]
    calls.clear()
    load_packed_manifest(packed_copy)
    assert calls == []  # a rerun does not rehash
    data = bytearray((packed_copy / "val.bin").read_bytes())
    data[0] ^= 0x01
    (packed_copy / "val.bin").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="val.bin fails its sha256"):
        load_packed_manifest(packed_copy)
    assert calls == ["val.bin"]


def test_out_of_vocabulary_ids_are_refused_on_open(tmp_path, tiny_tokenizer, tiny_texts, capsys):
    from lmforge.data.indexed import IndexedWriter

    packed = make_packed_dir(tmp_path / "oov", tiny_tokenizer, tiny_texts[:60])
    with IndexedWriter(packed / "train", np.uint16) as w:  # same row count, one id past the vocab
        for i in range(json.loads((packed / "manifest.json").read_text())["figures"]["sequences"]["train"]):
            w.add_sequence([5] * 31 + [400 + i % 3])
    manifest = json.loads((packed / "manifest.json").read_text())
    write_manifest(packed, "pack", config=manifest["config"], outputs=["train.bin", "train.idx", "val.bin", "val.idx"],
                   figures=manifest["figures"], tokenizer_sha256=manifest["tokenizer_sha256"])
    assert _pretrain(tmp_path, packed, tiny_tokenizer) == 2
    err = capsys.readouterr().err
    assert "outside the vocabulary of 400" in err and "IndexError" not in err


def test_tokenizer_without_manifest_is_refused_everywhere(tmp_path, tiny_tokenizer, tiny_packed, tiny_base_model,
                                                         capsys):
    from lmforge.model.loading import check_lineage

    tok = tmp_path / "tok"
    shutil.copytree(tiny_tokenizer, tok, ignore=shutil.ignore_patterns(".lmforge*"))
    (tok / "manifest.json").unlink()
    assert _pretrain(tmp_path, tiny_packed, tok) == 2
    assert "has no manifest.json" in capsys.readouterr().err
    sft_cfg = tmp_path / "sft_data.json"
    atomic_write_json(sft_cfg, {"name": "x", "source": {"format": "alpaca", "files": [str(tmp_path / "x.jsonl")]}})
    assert cli_main(["sft-data", "--config", str(sft_cfg), "--tokenizer_dir", str(tok),
                     "--output_dir", str(tmp_path / "sft")]) == 2
    assert "has no manifest.json" in capsys.readouterr().err
    with pytest.raises(ArtifactError, match="has no manifest.json"):
        check_lineage(tiny_base_model, tok)  # what eval and eval-sft run first


def test_tokenizer_file_corrupted_after_training_is_refused(tmp_path, tiny_tokenizer):
    from lmforge.tokenizer.spm import load_tokenizer_artifact

    tok = tmp_path / "tok"
    shutil.copytree(tiny_tokenizer, tok, ignore=shutil.ignore_patterns(".lmforge*"))
    assert load_tokenizer_artifact(tok).sha256 == sha256_file(tok / "spm.model")
    config = json.loads((tok / "tokenizer_config.json").read_text())
    config["model_max_length"] = 7  # same bytes count is not required: size or sha256 catches it
    (tok / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="tokenizer_config.json"):
        load_tokenizer_artifact(tok)


def test_sft_data_ids_outside_the_model_vocabulary_are_refused(tmp_path):
    from lmforge.data.indexed import IndexedWriter
    from lmforge.stages.sft import check_token_ids

    for split, top in (("train", 399), ("val", 400)):
        with IndexedWriter(tmp_path / split, np.uint16) as ids, IndexedWriter(tmp_path / f"{split}_mask", np.uint8) as m:
            ids.add_sequence([1, 7, top])
            m.add_sequence([0, 1, 1])
    check_token_ids([tmp_path], 401)
    with pytest.raises(ArtifactError, match="val.bin holds token id 400, outside the vocabulary of 400"):
        check_token_ids([tmp_path], 400)


def test_hash_cache_beside_mirror_data_is_not_taken_for_data(tmp_path):
    """The sha256 cache lands beside the files it describes; a mirror listing must not see it
    (it changed the eval's data identity, so a second quickstart run re-ran eval)."""
    from lmforge.artifacts import cached_sha256
    from lmforge.data.sources import mirror_files

    split = tmp_path / "org" / "name" / "test"
    split.mkdir(parents=True)
    (split / "data.jsonl").write_text('{"text": "x"}\n')
    cached_sha256(split / "data.jsonl")
    assert (split / artifacts.CACHE_NAME).is_file()
    assert mirror_files(tmp_path, "org/name", None, "test") == [str(split / "data.jsonl")]
