"""`lmforge pack`: round trip, split, determinism across workers, format, and bad input."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from conftest import make_corpus_dir, make_tokenizer_dir
from lmforge.artifacts import load_manifest, sha256_file
from lmforge.cli import main as cli_main
from lmforge.config import config_from_dict
from lmforge.errors import ArtifactError, ConfigError, DataError, LineageError
from lmforge.data.indexed import IndexedDataset
from lmforge.data.packed import load_packed_manifest, open_packed
from lmforge.data.packing import PackConfig, split_of
from lmforge.stages.pack import describe, run_pack

REPO = Path(__file__).resolve().parents[1]
SEQ = 64
VAL = 0.1
PACK_FILES = ("train.bin", "train.idx", "val.bin", "val.idx")


def pack_config(**overrides) -> PackConfig:
    base = {"seq_length": SEQ, "val_fraction": VAL, "workers": 2, "encode_batch_size": 16}
    return config_from_dict({**base, **overrides}, PackConfig)


def corpus_records(corpus: Path) -> list[dict]:
    records = []
    for shard in sorted((corpus / "shards").glob("shard_*.jsonl.gz")):
        with gzip.open(shard, "rt", encoding="utf-8") as handle:
            records += [json.loads(line) for line in handle]
    return records


def expected_streams(corpus: Path, tokenizer: Path, cfg: PackConfig) -> dict[str, list[int]]:
    """What the pack should hold, computed here from the shards and spm directly."""
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer / "spm.model"))
    streams: dict[str, list[int]] = {"train": [], "val": []}
    for record in corpus_records(corpus):
        streams[split_of(record["id"], cfg.seed, cfg.val_fraction)] += [1, *sp.encode(record["text"]), 2]
    return streams


def assert_nothing_written(out: Path) -> None:
    """No manifest, no final-named pack file, no temp leftovers."""
    if out.exists():
        names = sorted(p.name for p in out.iterdir())
        assert not [n for n in names if n == "manifest.json" or n in PACK_FILES or ".tmp" in n], names


@pytest.fixture(scope="module")
def packed(tmp_path_factory, tiny_corpus, tiny_tokenizer) -> Path:
    out = tmp_path_factory.mktemp("packed") / "pack"
    assert run_pack(tiny_corpus, tiny_tokenizer, out, pack_config()) is not None
    return out


# ---------------------------------------------------------------- behaviour

def test_round_trip_gives_back_framed_documents_in_order(packed, tiny_corpus, tiny_tokenizer):
    cfg = pack_config()
    expected = expected_streams(tiny_corpus, tiny_tokenizer, cfg)
    sp = spm.SentencePieceProcessor(model_file=str(tiny_tokenizer / "spm.model"))
    for split in ("train", "val"):
        data = open_packed(packed, split)
        stored = np.concatenate([data[i] for i in range(len(data))]).tolist()
        rows = len(expected[split]) // SEQ
        assert len(data) == rows and rows > 0
        assert stored == expected[split][:rows * SEQ]  # only the partial last row is dropped
        # Decoding the stored ids gives back the documents' text, BOS/EOS-delimited.
        decoded = [" ".join(sp.decode(doc).split()) for doc in _documents(stored)]
        texts = [r["text"] for r in corpus_records(tiny_corpus) if split_of(r["id"], cfg.seed, VAL) == split]
        assert decoded == [" ".join(t.split()) for t in texts[:len(decoded)]]
        assert len(decoded) >= len(texts) - 1 - (SEQ // 2)  # at most the tail is cut


def _documents(stream: list[int]) -> list[list[int]]:
    """Complete <s> ... </s> spans of a token stream."""
    docs, current = [], None
    for token in stream:
        if token == 1:
            current = []
        elif token == 2 and current is not None:
            docs.append(current)
            current = None
        elif current is not None:
            current.append(token)
    return docs


def test_split_is_by_document_and_disjoint(tiny_tokenizer, tiny_texts, tmp_path):
    # Each document carries its id in its text, so the ids can be read back from the .bin.
    docs = [f"[doc {i}] {text}" for i, text in enumerate(tiny_texts[:200])]
    corpus = make_corpus_dir(tmp_path / "corpus", docs, shard_size=40, source="tagged")
    manifest = run_pack(corpus, tiny_tokenizer, tmp_path / "out", pack_config(val_fraction=0.2))
    sp = spm.SentencePieceProcessor(model_file=str(tiny_tokenizer / "spm.model"))
    found = {}
    for split in ("train", "val"):
        data = open_packed(tmp_path / "out", split)
        stream = np.concatenate([data[i] for i in range(len(data))]).tolist()
        found[split] = [int(sp.decode(d).split("]")[0].removeprefix("[doc ")) for d in _documents(stream)]
    assert found["train"] and found["val"] and not set(found["train"]) & set(found["val"])
    for split in ("train", "val"):
        assigned = [i for i in range(200) if split_of(f"tagged-{i}", 1234, 0.2) == split]
        assert found[split] == assigned[:len(found[split])]  # in corpus order; only the tail may be cut
        assert len(found[split]) >= len(assigned) - 2
        assert manifest["figures"]["documents"][split] == len(assigned)


def test_split_of_is_deterministic_and_seeded():
    ids = [f"doc-{i}" for i in range(2000)]
    first = [split_of(i, 7, 0.02) for i in ids]
    assert first == [split_of(i, 7, 0.02) for i in ids]
    assert first != [split_of(i, 8, 0.02) for i in ids]
    assert 10 < first.count("val") < 80


def test_output_identical_for_one_and_two_workers(packed, tiny_corpus, tiny_tokenizer, tmp_path):
    run_pack(tiny_corpus, tiny_tokenizer, tmp_path / "one", pack_config(workers=1))
    for name in PACK_FILES:
        assert sha256_file(tmp_path / "one" / name) == sha256_file(packed / name), name
    assert load_packed_manifest(tmp_path / "one")["execution"]["workers"] == 1
    assert load_packed_manifest(packed)["execution"]["workers"] == 2


@pytest.mark.parametrize("piece_chars", [0, 1])
def test_output_identical_whatever_the_encoding_pieces(packed, tiny_corpus, tiny_tokenizer, tmp_path, piece_chars):
    """Whole documents (0) and a cut at every neutral space (1) give the default's bytes."""
    out = tmp_path / f"pieces_{piece_chars}"
    run_pack(tiny_corpus, tiny_tokenizer, out, pack_config(encode_piece_chars=piece_chars))
    for name in PACK_FILES:
        assert sha256_file(out / name) == sha256_file(packed / name), name
    assert load_packed_manifest(out)["execution"]["encode_piece_chars"] == piece_chars
    assert load_packed_manifest(packed)["execution"]["encode_piece_chars"] == 256


def test_many_uneven_chunks_keep_corpus_order_with_two_workers(packed, tiny_corpus, tiny_tokenizer, tmp_path,
                                                                monkeypatch):
    """Small chunks of uneven size exercise the largest-first scheduler and its re-ordering:
    the bytes must equal the one-chunk pack's."""
    import lmforge.data.packing as pack_module

    monkeypatch.setattr(pack_module, "CHUNK_BYTES", 3000)
    run_pack(tiny_corpus, tiny_tokenizer, tmp_path / "small_chunks", pack_config(workers=2))
    for name in PACK_FILES:
        assert sha256_file(tmp_path / "small_chunks" / name) == sha256_file(packed / name), name


def test_independent_reader_agrees_with_lmforge(packed):
    """Parse .idx/.bin from the MMIDIDX description with struct + numpy only."""
    for split in ("train", "val"):
        raw = (packed / f"{split}.idx").read_bytes()
        assert raw[:9] == b"MMIDIDX\x00\x00"
        version, code, count, doc_count = struct.unpack_from("<QBQQ", raw, 9)
        assert version == 1 and code == 8  # 8 = uint16
        offset = 9 + 8 + 1 + 8 + 8
        sizes = np.frombuffer(raw, np.int32, count, offset)
        pointers = np.frombuffer(raw, np.int64, count, offset + 4 * count)
        doc_index = np.frombuffer(raw, np.int64, doc_count, offset + 12 * count)
        assert offset + 12 * count + 8 * doc_count == len(raw)
        tokens = np.frombuffer((packed / f"{split}.bin").read_bytes(), np.uint16)
        ours = IndexedDataset(packed / split)
        assert (sizes == SEQ).all() and np.array_equal(sizes, ours.sizes)
        assert np.array_equal(pointers, np.arange(count) * SEQ * 2) and np.array_equal(pointers, ours.pointers)
        assert np.array_equal(doc_index, np.arange(count + 1)) and np.array_equal(doc_index, ours.document_indices)
        for i in (0, count // 2, count - 1):
            start = pointers[i] // 2
            assert np.array_equal(tokens[start:start + sizes[i]], ours[i])


def test_manifest_records_lineage_and_accounting(packed, tiny_corpus, tiny_tokenizer):
    manifest = load_packed_manifest(packed, verify="sha256")
    figures = manifest["figures"]
    assert manifest["tokenizer_sha256"] == sha256_file(tiny_tokenizer / "spm.model")
    assert figures["seq_length"] == SEQ and figures["dtype"] == "uint16" and figures["vocab_size"] == 400
    rows = figures["sequences"]
    assert figures["total_tokens"] == (rows["train"] + rows["val"]) * SEQ
    dropped = figures["leftover"]["dropped_tokens"]
    assert all(0 <= dropped[s] < SEQ for s in ("train", "val"))
    # Every token of every document is either stored or counted as dropped.
    assert sum(figures["tokens_per_source"].values()) == figures["total_tokens"] + sum(dropped.values())
    assert sum(figures["documents"].values()) == len(corpus_records(tiny_corpus))
    assert figures["padding_tokens"] == 0 and figures["skipped_records"] == {}
    assert manifest["inputs"]["corpus"]["identity"] == load_manifest(tiny_corpus, "corpus")["identity"]


def test_rerun_is_skipped_unless_forced(packed, tiny_corpus, tiny_tokenizer):
    before = (packed / "manifest.json").read_bytes()
    assert run_pack(tiny_corpus, tiny_tokenizer, packed, pack_config(workers=1)) is None
    assert (packed / "manifest.json").read_bytes() == before
    copy = packed.parent / "forced"
    shutil.copytree(packed, copy)
    assert run_pack(tiny_corpus, tiny_tokenizer, copy, pack_config(workers=1), force=True) is not None
    assert sha256_file(copy / "train.bin") == sha256_file(packed / "train.bin")


def test_bad_records_are_skipped_and_counted(tiny_tokenizer, tiny_texts, tmp_path):
    corpus = make_corpus_dir(tmp_path / "corpus", tiny_texts[:120], shard_size=60)
    shard = corpus / "shards" / "shard_0000.jsonl.gz"
    lines = gzip.decompress(shard.read_bytes()).splitlines(keepends=True)
    lines[3:3] = [b'{"id": "broken", "text": \n', b'{"id": "e", "text": "   "}\n', b'{"id": "n"}\n',
                  b'{"id": "bad-utf8", "text": "\xff\xfe"}\n']
    shard.write_bytes(gzip.compress(b"".join(lines)))
    _rewrite_manifest_hashes(corpus)
    manifest = run_pack(corpus, tiny_tokenizer, tmp_path / "out", pack_config())
    assert manifest["figures"]["skipped_records"] == {"empty_text": 1, "invalid_utf8": 1, "malformed_json": 1,
                                                     "missing_text": 1}
    assert sum(manifest["figures"]["documents"].values()) == 120


def _rewrite_manifest_hashes(corpus: Path) -> None:
    """Re-stamp a hand-edited corpus (the edit is deliberate, not corruption)."""
    manifest = json.loads((corpus / "manifest.json").read_text())
    for entry in manifest["outputs"]:
        entry["bytes"] = (corpus / entry["path"]).stat().st_size
        entry["sha256"] = sha256_file(corpus / entry["path"])
    (corpus / "manifest.json").write_text(json.dumps(manifest))


# ---------------------------------------------------------------- bad input

def test_tokenizer_whose_sha256_differs_from_its_config(tiny_corpus, tiny_tokenizer, tmp_path):
    tok = shutil.copytree(tiny_tokenizer, tmp_path / "tok")
    config = json.loads((tok / "tokenizer_config.json").read_text())
    config["sha256_hash"] = "0" * 64
    (tok / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(LineageError, match="0{64}"):
        run_pack(tiny_corpus, tok, tmp_path / "out", pack_config())
    assert_nothing_written(tmp_path / "out")


def test_refuses_pack_made_with_another_tokenizer(packed, tiny_corpus, tiny_texts, tmp_path):
    other = make_tokenizer_dir(tmp_path / "other_tok", tiny_texts, vocab_size=450)
    target = shutil.copytree(packed, tmp_path / "existing")
    before = {n: sha256_file(target / n) for n in (*PACK_FILES, "manifest.json")}
    old_sha, new_sha = load_packed_manifest(target)["tokenizer_sha256"], sha256_file(other / "spm.model")
    with pytest.raises(LineageError) as info:
        run_pack(tiny_corpus, other, target, pack_config())
    assert old_sha in str(info.value) and new_sha in str(info.value)
    assert before == {n: sha256_file(target / n) for n in before}  # untouched
    manifest = run_pack(tiny_corpus, other, target, pack_config(), force=True)
    assert manifest["tokenizer_sha256"] == new_sha


def test_corrupted_shard_leaves_previous_pack_intact(packed, tiny_corpus, tiny_tokenizer, tmp_path):
    corpus = shutil.copytree(tiny_corpus, tmp_path / "corpus")
    shard = corpus / "shards" / "shard_0003.jsonl.gz"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="corrupted shard .*shard_0003"):
        run_pack(corpus, tiny_tokenizer, tmp_path / "out", pack_config())
    assert_nothing_written(tmp_path / "out")
    target = shutil.copytree(packed, tmp_path / "existing")
    with pytest.raises(ArtifactError, match="corrupted shard"):
        run_pack(corpus, tiny_tokenizer, target, pack_config(), force=True)
    load_packed_manifest(target, verify="sha256")  # the earlier pack still reads as complete


def test_truncated_gzip_is_a_corrupted_shard(tiny_tokenizer, tiny_texts, tmp_path):
    corpus = make_corpus_dir(tmp_path / "corpus", tiny_texts[:100])
    shard = corpus / "shards" / "shard_0001.jsonl.gz"
    shard.write_bytes(shard.read_bytes()[:-40])
    _rewrite_manifest_hashes(corpus)  # hashes match: only reading finds the damage
    with pytest.raises(ArtifactError, match="corrupted shard .*shard_0001"):
        run_pack(corpus, tiny_tokenizer, tmp_path / "out", pack_config())
    assert_nothing_written(tmp_path / "out")


def test_empty_corpus(tiny_tokenizer, tmp_path):
    corpus = make_corpus_dir(tmp_path / "corpus", [])
    with pytest.raises(DataError, match="empty"):
        run_pack(corpus, tiny_tokenizer, tmp_path / "out", pack_config())
    assert_nothing_written(tmp_path / "out")


def test_corpus_too_small_for_a_row_per_split(tiny_tokenizer, tiny_texts, tmp_path):
    corpus = make_corpus_dir(tmp_path / "corpus", tiny_texts[:3])
    with pytest.raises(DataError, match="too small"):
        run_pack(corpus, tiny_tokenizer, tmp_path / "out", pack_config())
    assert_nothing_written(tmp_path / "out")


def test_vocab_too_large_for_dtype(tiny_corpus, tiny_tokenizer, tmp_path):
    with pytest.raises(ConfigError, match="uint8 holds token ids up to 255.*400 ids"):
        run_pack(tiny_corpus, tiny_tokenizer, tmp_path / "out", pack_config(dtype="uint8"))
    assert_nothing_written(tmp_path / "out")


def test_refuses_to_overwrite_another_stage(tiny_corpus, tiny_tokenizer):
    with pytest.raises(ArtifactError, match="'corpus' artifact, not a pack"):
        run_pack(tiny_corpus, tiny_tokenizer, tiny_corpus, pack_config())


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"seq_length": 0, "val_fraction": 0.0, "separator": "eos", "dtype": "float32",
                          "seq_len": 3}, PackConfig)
    message = str(info.value)
    for key in ("seq_length", "val_fraction", "separator", "dtype", "seq_len: unknown key"):
        assert key in message


def test_shipped_configs_load():
    from lmforge.config import load_config

    assert load_config(REPO / "config/pretrain/packing/default.json", PackConfig).output_key() == {
        "seq_length": 1024, "val_fraction": 0.02, "separator": "bos_eos", "dtype": "auto", "seed": 1234,
        "leftover": "drop"}
    assert load_config(REPO / "config/quickstart/packing.json", PackConfig).seq_length == 256


# ---------------------------------------------------------------- reader helpers

def test_open_packed_checks_lineage_split_and_size(packed, tmp_path):
    with pytest.raises(LineageError, match="f{64}"):
        open_packed(packed, "train", tokenizer_sha256="f" * 64, tokenizer_from="other/spm.model")
    with pytest.raises(ArtifactError, match="unknown split"):
        open_packed(packed, "test")
    broken = shutil.copytree(packed, tmp_path / "broken")
    with open(broken / "val.bin", "r+b") as handle:
        handle.truncate(10)
    with pytest.raises(ArtifactError, match="val.bin"):
        open_packed(broken, "val")


# ---------------------------------------------------------------- CLI

def test_plan_command_runs_verbatim_and_prints_summary(tiny_corpus, tiny_tokenizer, tmp_path):
    out = tmp_path / "data/processed/tiny_23M_1024"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts/30_pack_dataset.py"), "--config",
         str(REPO / "config/pretrain/packing/default.json"), "--corpus-dir", str(tiny_corpus),
         "--tokenizer-dir", str(tiny_tokenizer), "--output-dir", str(out), "--log-level", "INFO",
         "--set", "seq_length=128", "--set", "val_fraction=0.1"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for needle in ("✅ Sequence packing complete!", "Total tokens:", "Sequences:", "Train:", "Val:",
                   "train.bin", "val.idx", sha256_file(tiny_tokenizer / "spm.model")):
        assert needle in proc.stdout
    assert "SHA256 validated" in proc.stderr and "Corpus manifest loaded" in proc.stderr
    assert json.loads((out / "manifest.json").read_text())["tokenizer_sha256"] == sha256_file(
        tiny_tokenizer / "spm.model")


def test_cli_error_exit_code_2_without_traceback(tiny_corpus, tiny_tokenizer, tmp_path):
    tok = shutil.copytree(tiny_tokenizer, tmp_path / "tok")
    (tok / "spm.model").write_bytes((tok / "spm.model").read_bytes() + b"x")
    proc = subprocess.run([sys.executable, "-m", "lmforge.cli", "pack", "--corpus-dir", str(tiny_corpus),
                           "--tokenizer-dir", str(tok), "--output-dir", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
    assert_nothing_written(tmp_path / "out")


def test_cli_in_process_errors(tiny_corpus, tiny_tokenizer, tmp_path, capsys):
    base = ["pack", "--corpus-dir", str(tiny_corpus), "--tokenizer-dir", str(tiny_tokenizer),
            "--output-dir", str(tmp_path / "out")]
    assert cli_main([*base, "--set", "dtype=uint8"]) == 2
    assert cli_main([*base, "--config", str(tmp_path / "missing.json")]) == 2
    assert cli_main([*base[:3], "--tokenizer-dir", str(tmp_path), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 3 and "Traceback" not in err


def test_describe_estimates_without_running(tiny_corpus, tiny_tokenizer, tmp_path):
    args = Namespace(config=str(REPO / "config/pretrain/packing/default.json"), corpus_dir=str(tiny_corpus),
                     tokenizer_dir=str(tiny_tokenizer), output_dir=str(tmp_path / "out"), workers=None,
                     overrides=["seq_length=256"])
    figures = describe(args)
    assert figures["seq_length"] == "256" and "98%/2%" in figures["split"]
    assert "tokens (estimate)" in figures
    assert not (tmp_path / "out").exists()
