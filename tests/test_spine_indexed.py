"""Megatron indexed format: round trip, header layout, atomicity."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from lmforge.errors import ArtifactError
from lmforge.data.indexed import IndexedDataset, IndexedWriter, smallest_token_dtype


def test_round_trip_and_header_layout(tmp_path):
    seqs = [[1, 2, 3], [65535, 0], [7] * 10]
    with IndexedWriter(tmp_path / "train", np.uint16) as writer:
        writer.add_sequence(seqs[0])
        writer.add_sequence(seqs[1])
        writer.end_document()
        writer.add_sequence(seqs[2])
        writer.end_document()
    ds = IndexedDataset(tmp_path / "train")
    assert [ds[i].tolist() for i in range(len(ds))] == seqs
    assert ds.document_indices.tolist() == [0, 2, 3] and ds.total_tokens == 15
    raw = (tmp_path / "train.idx").read_bytes()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    version, code, count, docs = struct.unpack("<QBQQ", raw[9:34])
    assert (version, code, count, docs) == (1, 8, 3, 3)  # 8 = uint16
    assert np.frombuffer(raw[34:46], np.int32).tolist() == [3, 2, 10]
    assert np.frombuffer(raw[46:70], np.int64).tolist() == [0, 6, 10]  # byte offsets


def test_failed_writer_leaves_no_files(tmp_path):
    with pytest.raises(RuntimeError):
        with IndexedWriter(tmp_path / "val") as writer:
            writer.add_sequence([1, 2])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_truncated_bin_is_refused(tmp_path):
    with IndexedWriter(tmp_path / "x") as writer:
        writer.add_sequence(list(range(100)))
    data = (tmp_path / "x.bin").read_bytes()
    (tmp_path / "x.bin").write_bytes(data[:-2])
    with pytest.raises(ArtifactError, match="truncated"):
        IndexedDataset(tmp_path / "x")


def test_dtype_choice():
    assert smallest_token_dtype(32768) is np.uint16
    assert smallest_token_dtype(65536) is np.uint16
    assert smallest_token_dtype(65537) is np.int32


def test_all_or_nothing_finalizes_together_or_leaves_nothing(tmp_path):
    from lmforge.data.indexed import all_or_nothing

    with all_or_nothing({s: IndexedWriter(tmp_path / "ok" / s) for s in ("train", "val")}) as writers:
        writers["train"].add_sequence([1, 2])
        writers["val"].add_sequence([3])
    assert [IndexedDataset(tmp_path / "ok" / s)[0].tolist() for s in ("train", "val")] == [[1, 2], [3]]
    with pytest.raises(RuntimeError):
        with all_or_nothing({s: IndexedWriter(tmp_path / "bad" / s) for s in ("train", "val")}) as writers:
            writers["train"].add_sequence([1, 2])
            raise RuntimeError("killed mid-stage")
    assert not (tmp_path / "bad").exists() or list((tmp_path / "bad").iterdir()) == []
