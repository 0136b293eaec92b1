"""`lmforge tokenizer`: integrity checks, sentence streaming, outputs, determinism, errors."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm

from conftest import make_corpus_dir, stdlib_texts
from lmforge import cli
from lmforge.artifacts import artifact_identity, load_manifest, sha256_file, write_manifest
from lmforge.config import config_from_dict
from lmforge.errors import ArtifactError, ConfigError, DataError
from lmforge.stages.tokenizer import train_tokenizer
from lmforge.tokenizer.training import CorpusStream, is_held_out, passages, split_long_line, TokenizerConfig
from lmforge.tokenizer.spm import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
SPM32K = REPO / "config" / "pretrain" / "tokenizer" / "spm32k.json"


def small_config(corpus: Path, **changes) -> TokenizerConfig:
    values = dict(corpus_dir=str(corpus), vocab_size=400, num_threads=1, held_out_fraction=0.05)
    values.update(changes)
    return TokenizerConfig(**values)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus_dir(tmp_path_factory.mktemp("tok_corpus"), stdlib_texts(200))


# ---------------------------------------------------------------- outputs

def test_outputs_follow_the_artifact_contract(tiny_tokenizer):
    out = tiny_tokenizer
    for name in ("spm.model", "spm.vocab", "tokenizer_config.json", "TOKENIZER_CARD.md", "tokenizer.json"):
        assert (out / name).is_file(), name
    digest = sha256_file(out / "spm.model")
    config = json.loads((out / "tokenizer_config.json").read_text())
    manifest = load_manifest(out, "tokenizer", verify="sha256")
    assert config["sha256_hash"] == digest == manifest["tokenizer_sha256"]
    assert config["vocab_size"] == 400 and config["model_type"] == "bpe"
    assert config["special_token_ids"] == {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3,
                                           "<|im_start|>": 4, "<|im_end|>": 5}
    corpus_dir = Path(manifest["config"]["corpus_dir"])
    assert config["corpus_identity"] == artifact_identity(load_manifest(corpus_dir, "corpus"))
    assert "<|im_start|>" in config["chat_template"] and config["add_bos_token"] is False
    listed = {entry["path"] for entry in manifest["outputs"]}
    assert {"spm.model", "spm.vocab", "tokenizer_config.json", "TOKENIZER_CARD.md", "tokenizer.json"} <= listed


def test_model_has_fixed_special_ids_and_chatml_as_single_tokens(tiny_tokenizer):
    tok = load_tokenizer(tiny_tokenizer)
    assert tok.vocab_size == 400
    assert [tok.sp.id_to_piece(i) for i in range(6)] == ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
    ids = tok.encode("<|im_start|>user\nhello<|im_end|>")
    assert ids[0] == 4 and ids[-1] == 5 and ids.count(4) == 1 and ids.count(5) == 1


def test_text_round_trips_byte_for_byte(tiny_tokenizer):
    tok = load_tokenizer(tiny_tokenizer)
    text = "  Indented line\n\nTabs\there, emoji 😀, accents é, CJK 中文, digits 2026.\n"
    assert tok.decode(tok.encode(text)) == text
    assert tok.sp.encode("2026") == [tok.sp.piece_to_id(d) for d in "2026"]  # split_digits
    # Docstrings are indented: runs of spaces become single pieces (allow_whitespace_only_pieces).
    assert "▁▁▁▁" in tok.sp.encode("    indented", out_type=str)


def test_vocab_file_lists_every_piece(tiny_tokenizer):
    lines = (tiny_tokenizer / "spm.vocab").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 400
    assert lines[0].split("\t")[0] == "<unk>" and lines[4].split("\t")[0] == "<|im_start|>"


def test_card_reports_metrics_per_source_and_overall(tiny_tokenizer):
    card = (tiny_tokenizer / "TOKENIZER_CARD.md").read_text(encoding="utf-8")
    manifest = load_manifest(tiny_tokenizer, "tokenizer")
    overall = manifest["figures"]["held_out_metrics"]["overall"]
    assert overall["passages"] > 0 and overall["tokens"] > 0
    assert overall["chars_per_token"] == pytest.approx(overall["characters"] / overall["tokens"], abs=1e-3)
    assert f"{overall['chars_per_token']:.3f}" in card
    assert "| stdlib |" in card and "| **overall** |" in card
    assert manifest["tokenizer_sha256"] in card


def test_summary_and_analysis_are_printed(corpus, tmp_path, capsys, caplog):
    caplog.set_level("INFO", logger="lmforge")
    train_tokenizer(small_config(corpus), tmp_path / "tok")
    printed = capsys.readouterr().out
    assert "✅ Tokenizer training complete!" in printed and "vocab_size=400" in printed
    for label in ("Compression ratio:", "Fertility:", "Coverage:"):
        assert label in printed
    shards = len(load_manifest(corpus, "corpus")["outputs"])
    assert f"Integrity verification: {shards}/{shards} shards" in caplog.text
    assert f"Corpus analysis: {shards}/{shards} shards processed" in caplog.text


# ---------------------------------------------------------------- determinism and idempotence

def test_same_corpus_and_config_give_the_same_sha256(corpus, tmp_path):
    cfg = small_config(corpus, num_threads=2)
    first = train_tokenizer(cfg, tmp_path / "a")["tokenizer_sha256"]
    second = train_tokenizer(cfg, tmp_path / "b")["tokenizer_sha256"]
    assert first == second
    other_vocab = train_tokenizer(small_config(corpus, vocab_size=420), tmp_path / "c")["tokenizer_sha256"]
    assert other_vocab != first


def test_thread_count_does_not_change_the_pieces(corpus, tmp_path):
    # SentencePiece records num_threads inside spm.model, so the sha256 follows the
    # setting, but the vocabulary and merges (what tokenization depends on) do not.
    one = train_tokenizer(small_config(corpus, num_threads=1), tmp_path / "one")
    two = train_tokenizer(small_config(corpus, num_threads=2), tmp_path / "two")
    assert (tmp_path / "one" / "spm.vocab").read_text() == (tmp_path / "two" / "spm.vocab").read_text()
    assert one["tokenizer_sha256"] != two["tokenizer_sha256"]


def test_rerun_is_skipped_unless_forced(corpus, tmp_path, caplog):
    caplog.set_level("INFO", logger="lmforge")
    out = tmp_path / "tok"
    cfg = small_config(corpus)
    train_tokenizer(cfg, out)
    mtime = (out / "spm.model").stat().st_mtime_ns
    train_tokenizer(cfg, out)
    assert "up to date, skipping" in caplog.text
    assert (out / "spm.model").stat().st_mtime_ns == mtime
    train_tokenizer(cfg, out, force=True)
    assert (out / "spm.model").stat().st_mtime_ns != mtime


# ---------------------------------------------------------------- integrity

def test_corrupted_shard_is_named_and_nothing_is_written(corpus, tmp_path):
    bad = tmp_path / "corpus"
    make_corpus_dir(bad, stdlib_texts(120))
    shard = bad / "shards" / "shard_0001.jsonl.gz"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    shard.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="shard_0001.jsonl.gz fails its sha256"):
        train_tokenizer(small_config(bad), tmp_path / "tok")
    assert not (tmp_path / "tok").exists()


def test_missing_shard_is_named(tmp_path):
    corpus = make_corpus_dir(tmp_path / "corpus", stdlib_texts(120))
    (corpus / "shards" / "shard_0002.jsonl.gz").unlink()
    with pytest.raises(ArtifactError, match="shard_0002.jsonl.gz"):
        train_tokenizer(small_config(corpus), tmp_path / "tok")


def test_corpus_without_manifest_is_refused(tmp_path):
    corpus = make_corpus_dir(tmp_path / "corpus", stdlib_texts(60))
    (corpus / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        train_tokenizer(small_config(corpus), tmp_path / "tok")


# ---------------------------------------------------------------- sentences

def test_split_long_line_respects_bytes_words_and_characters():
    line = " ".join(["wörd", "ünïcode", "😀😀", "plain"] * 200)
    pieces = split_long_line(line, 100)
    assert "".join(pieces) == line
    assert all(len(p.encode("utf-8")) <= 100 for p in pieces)
    assert all(p.startswith(" ") for p in pieces[1:])  # cut before a space, so words stay whole
    no_spaces = "é😀" * 300
    pieces = split_long_line(no_spaces, 64)
    assert "".join(pieces) == no_spaces and all(len(p.encode("utf-8")) <= 64 for p in pieces)
    assert split_long_line("short", 64) == ["short"]


def test_long_lines_are_split_and_counted_not_dropped(tmp_path):
    docs = stdlib_texts(80) + ["x" + " lorem ipsum dolor" * 1500]  # one 27 KB line
    corpus = make_corpus_dir(tmp_path / "corpus", docs)
    cfg = small_config(corpus, max_sentence_length=1000, held_out_fraction=0.0)
    figures = train_tokenizer(cfg, tmp_path / "tok")["figures"]
    assert figures["long_lines_split"] == 1
    assert figures["pieces_from_long_lines"] >= 27
    stream = CorpusStream(corpus, [f"shards/shard_{i:04d}.jsonl.gz" for i in range(2)], cfg)
    assert max(len(s.encode("utf-8")) for s in stream) <= 1000


def test_held_out_passages_never_reach_training(tmp_path):
    docs = list(dict.fromkeys(stdlib_texts(150)))  # some docstrings are shared by several objects
    corpus = make_corpus_dir(tmp_path / "corpus", docs)
    cfg = small_config(corpus, held_out_fraction=0.2)
    shards = [e["path"] for e in load_manifest(corpus, "corpus")["outputs"]]
    stream = CorpusStream(corpus, shards, cfg)
    trained = set(stream)
    held = [text for i, text in enumerate(docs) if is_held_out(f"stdlib-{i}#0", 0.2)]  # one passage each
    assert 10 < len(held) < 60
    assert stream.stats.held_out_passages == len(held)
    assert sum(map(len, stream.held_out.values())) == len(held)
    for text in held:
        unique = [line for line in text.split("\n") if line.strip() and all(line not in d for d in docs if d != text)]
        assert not any(line in trained for line in unique)


def test_long_documents_are_cut_into_passages_at_line_ends():
    text = "".join(f"line {i} " + "x" * 90 + "\n" for i in range(100))  # 100 lines of ~98 chars
    parts = list(passages(text, 1000))
    assert "".join(parts) == text and 9 <= len(parts) <= 10
    assert all(p.endswith("\n") for p in parts) and all(len(p) >= 1000 for p in parts[:-1])
    assert list(passages("short", 1000)) == ["short"]


def test_bad_records_are_skipped_and_counted(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "shards").mkdir(parents=True)
    lines = [json.dumps({"id": f"d{i}", "source": "s", "text": t}) for i, t in enumerate(stdlib_texts(60))]
    lines += ["{not json", json.dumps({"id": "e", "text": "   "}), json.dumps({"id": "m", "body": "x"}), "[1, 2]"]
    with gzip.open(corpus / "shards" / "shard_0000.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    write_manifest(corpus, "corpus", config={}, outputs=["shards/shard_0000.jsonl.gz"])
    figures = train_tokenizer(small_config(corpus), tmp_path / "tok")["figures"]
    assert figures["skipped"] == {"malformed_json": 1, "empty_text": 1, "missing_text": 1, "not_an_object": 1}
    assert figures["documents"] == 60


def test_vocab_too_large_for_corpus_is_a_data_error(tmp_path):
    corpus = make_corpus_dir(tmp_path / "corpus", stdlib_texts(5))
    with pytest.raises(DataError, match="SentencePiece training failed"):
        train_tokenizer(small_config(corpus, vocab_size=50_000), tmp_path / "tok")
    assert not (tmp_path / "tok" / "manifest.json").exists()


# ---------------------------------------------------------------- config and CLI

def test_shipped_config_has_the_plan_values():
    cfg = config_from_dict(json.loads(SPM32K.read_text()), TokenizerConfig)
    assert cfg.vocab_size == 32768 and cfg.model_type == "bpe" and cfg.byte_fallback
    assert cfg.max_sentences == 100_000_000 and cfg.corpus_dir == "data/datasets/tokenizer_corpus"
    config_from_dict(json.loads((REPO / "config/quickstart/tokenizer.json").read_text()), TokenizerConfig)


def test_config_errors_are_all_reported():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"vocab_size": 10, "model_type": "wordpiece", "vocab_sise": 3, "seed": "x"}, TokenizerConfig)
    message = str(err.value)
    for needle in ("vocab_size: must be >= 300", "model_type: must be one of", "did you mean 'vocab_size'", "seed"):
        assert needle in message


def test_cli_errors_exit_2_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"vocab_size": "big"}))
    assert cli.main(["tokenizer", "--config", str(bad), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "vocab_size" in err and "Traceback" not in err
    code = cli.main(["tokenizer", "--config", str(SPM32K), "--output-dir", str(tmp_path / "o"),
                     "--corpus-dir", str(tmp_path / "nowhere")])
    assert code == 2 and "nowhere" in capsys.readouterr().err


def test_plan_script_with_flag_overrides(corpus, tmp_path):
    out = tmp_path / "spm_small"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "20_train_tokenizer.py"), "--config", str(SPM32K),
         "--output-dir", str(out), "--corpus-dir", str(corpus), "--set", "vocab_size=400",
         "--set", "num_threads=1", "--log-level", "INFO"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "✅ Tokenizer training complete!" in result.stdout
    assert "Integrity verification" in result.stderr
    assert json.loads((out / "tokenizer_config.json").read_text())["vocab_size"] == 400


def test_describe_reports_figures_without_training(corpus, tmp_path):
    from argparse import Namespace

    from lmforge.stages.tokenizer import describe

    args = Namespace(config=str(SPM32K), corpus_dir=str(corpus), set=["vocab_size=1000"])
    figures = describe(args)
    assert figures["vocab_size"] == "1000" and figures["corpus documents"] == "200"
    assert not (tmp_path / "anything").exists()


def test_sentencepiece_model_loads_standalone(tiny_tokenizer):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_tokenizer / "spm.model"))
    assert sp.get_piece_size() == 400 and sp.bos_id() == 1 and sp.eos_id() == 2 and sp.pad_id() == 3


def test_corpus_with_only_empty_documents_is_a_clear_error(tmp_path):
    corpus = make_corpus_dir(tmp_path / "corpus", ["   ", "\n\n"])
    with pytest.raises(DataError, match="no training sentences"):
        train_tokenizer(small_config(corpus), tmp_path / "tok")


def test_unreadable_shard_is_reported_as_the_cause(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "shards").mkdir(parents=True)
    (corpus / "shards" / "shard_0000.jsonl.gz").write_bytes(b"this is not gzip data at all")
    write_manifest(corpus, "corpus", config={}, outputs=["shards/shard_0000.jsonl.gz"])
    with pytest.raises(DataError, match="cannot read shard .*shard_0000.jsonl.gz"):
        train_tokenizer(small_config(corpus), tmp_path / "tok")


def test_sentence_cap_samples_and_says_so(corpus, tmp_path, caplog):
    caplog.set_level("INFO", logger="lmforge")
    figures = train_tokenizer(small_config(corpus, max_sentences=800), tmp_path / "tok")["figures"]
    assert figures["sentences"] > 800  # all streamed and counted, 800 sampled for training
    assert "trained on a random sample" in caplog.text
