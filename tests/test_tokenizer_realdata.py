"""Real-data tier: a tokenizer trained on mirror text (C4, Wikipedia) fits held-out text and
exports to Hugging Face exactly. Skips when the mirror is absent."""

from __future__ import annotations

import itertools

import pytest
import sentencepiece as spm

from conftest import make_corpus_dir
from lmforge.artifacts import load_manifest, write_manifest
from lmforge.data.sources import stream_hub
from lmforge.stages.tokenizer import train_tokenizer
from lmforge.tokenizer.training import TokenizerConfig
from lmforge.tokenizer.spm import hf_tokenizer

pytestmark = pytest.mark.realdata


def mirror_texts(mirror, hub_id, config, split, count):
    records = stream_hub(hub_id, config, split, mirror=str(mirror))
    return [r["text"] for r in itertools.islice(records, count)]


@pytest.fixture(scope="module")
def real_tokenizer(mirror, tmp_path_factory):
    root = tmp_path_factory.mktemp("real_tok")
    c4 = mirror_texts(mirror, "allenai/c4", "en", "train", 600)
    wiki = [t[:30_000] for t in mirror_texts(mirror, "wikimedia/wikipedia", "20231101.en", "train", 40)]
    corpus = make_corpus_dir(root / "corpus", c4, shard_size=200, source="c4")
    # A second source in the same artifact: append its shard and rewrite the manifest.
    make_corpus_dir(root / "wiki", wiki, shard_size=100, source="wikipedia")
    (root / "wiki" / "shards" / "shard_0000.jsonl.gz").rename(corpus / "shards" / "shard_0099.jsonl.gz")

    shards = sorted(p.relative_to(corpus).as_posix() for p in (corpus / "shards").iterdir())
    write_manifest(corpus, "corpus", config={"test": "realdata"}, outputs=shards)
    cfg = TokenizerConfig(corpus_dir=str(corpus), vocab_size=2000, num_threads=2, held_out_fraction=0.1,
                          held_out_passage_chars=5000)
    train_tokenizer(cfg, root / "tok")
    return root / "tok", c4, wiki


def test_real_text_metrics_are_sensible(real_tokenizer):
    out, _, _ = real_tokenizer
    metrics = load_manifest(out, "tokenizer")["figures"]["held_out_metrics"]
    assert set(metrics) == {"c4", "wikipedia", "overall"}
    overall = metrics["overall"]
    # A 2K-piece English BPE packs about 3 characters per token; bytes-only would be ~1.
    assert 2.8 < overall["chars_per_token"] < 5.0
    assert 1.1 < overall["tokens_per_word"] < 2.5
    assert overall["coverage_percent"] > 99.0


def test_hugging_face_export_matches_on_real_documents(real_tokenizer):
    out, c4, wiki = real_tokenizer
    sp = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    hf = hf_tokenizer(out)
    texts = c4[:200] + wiki[:20]
    assert [hf.encode(t) for t in texts] == sp.encode(texts)
    assert all(hf.decode(hf.encode(t)) == t for t in texts[:50])
