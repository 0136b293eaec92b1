"""`lmforge pack` on real web text from the hub mirror (skipped when the mirror is absent)."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import sentencepiece as spm

from conftest import make_corpus_dir, make_tokenizer_dir
from lmforge.config import config_from_dict
from lmforge.data.packed import load_packed_manifest, open_packed
from lmforge.data.sources import stream_hub
from lmforge.data.packing import PackConfig, split_of
from lmforge.stages.pack import run_pack

pytestmark = pytest.mark.realdata


def test_pack_real_c4_round_trip_with_two_workers(mirror, tmp_path):
    texts = [r["text"] for r in islice(stream_hub("allenai/c4", "en", "train", mirror=mirror), 400)]
    corpus = make_corpus_dir(tmp_path / "corpus", texts, shard_size=60, source="c4")
    tokenizer = make_tokenizer_dir(tmp_path / "tok", texts[:200], vocab_size=2000)
    cfg = config_from_dict({"seq_length": 256, "val_fraction": 0.05, "workers": 2}, PackConfig)
    manifest = run_pack(corpus, tokenizer, tmp_path / "out", cfg)

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer / "spm.model"))
    expected = {"train": [], "val": []}
    for i, ids in enumerate(sp.encode(texts)):
        expected[split_of(f"c4-{i}", cfg.seed, cfg.val_fraction)] += [1, *ids, 2]
    for split in ("train", "val"):
        data = open_packed(tmp_path / "out", split, tokenizer_sha256=manifest["tokenizer_sha256"])
        rows = len(expected[split]) // 256
        assert len(data) == rows > 0
        assert np.concatenate([data[i] for i in range(rows)]).tolist() == expected[split][:rows * 256]
    figures = load_packed_manifest(tmp_path / "out", verify="sha256")["figures"]
    assert figures["tokens_per_source"]["c4"] == sum(len(v) for v in expected.values())
    assert figures["skipped_records"] == {}
