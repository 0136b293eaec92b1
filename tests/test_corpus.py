"""`lmforge corpus` end to end on small generated sources."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.artifacts import load_manifest, sha256_file
from lmforge.cli import main as cli_main
from lmforge.errors import ConfigError
from lmforge.stages.corpus import KILL_AFTER_PARTS_ENV, load_corpus_config


def write_jsonl(path: Path, records: list, gz: bool = False) -> str:
    data = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return str(path)


def write_config(tmp_path: Path, sources: list[dict], name: str = "corpus.json", **params) -> str:
    params.setdefault("min_chars", 20)
    path = tmp_path / name
    path.write_text(json.dumps({"sources": sources, "processing_params": params}))
    return str(path)


def run(config: str, out: Path, *extra: str) -> int:
    return cli_main(["corpus", "--config", config, "--output-dir", str(out), *extra])


def read_shards(out: Path) -> list[list[dict]]:
    shards = sorted((out / "shards").glob("shard_*.jsonl.gz"))
    return [[json.loads(line) for line in gzip.open(p, "rt", encoding="utf-8")] for p in shards]


def shard_hashes(out: Path) -> list[str]:
    return [sha256_file(p) for p in sorted((out / "shards").glob("shard_*.jsonl.gz"))]


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory, tiny_texts):
    """Two local sources of real text: half the docstrings each, in two file formats."""
    root = tmp_path_factory.mktemp("sources")
    half = len(tiny_texts) // 2
    a = write_jsonl(root / "a.jsonl.gz", [{"text": t} for t in tiny_texts[:half]], gz=True)
    b = write_jsonl(root / "b.jsonl", [{"body": t} for t in tiny_texts[half:]])
    return [{"name": "alpha", "type": "local", "paths": [a], "tokens": 8000},
            {"name": "beta", "type": "local", "paths": [b], "text_field": "body", "tokens": 6000}]


# ---------------------------------------------------------------- config validation

def test_config_errors_are_reported_all_at_once(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({
        "sources": [{"name": "c4", "type": "web", "tokens": 0},
                    {"name": "c4", "type": "hf", "tokens": 10, "datset": "x"}],
        "processing_params": {"shard_size": 0, "normalization": "NFX", "min_chars": "ten"},
    }))
    with pytest.raises(ConfigError) as err:
        load_corpus_config(path)
    message = str(err.value)
    for expected in ("sources[0].type: must be one of 'hf', 'local', 'builtin', got 'web'",
                     "sources[0].tokens: must be >= 1, got 0",
                     "sources[1].datset: unknown key (did you mean 'dataset'?)",
                     "type 'hf' needs 'dataset'",
                     "processing_params.shard_size: must be >= 1, got 0",
                     "processing_params.normalization: must be one of",
                     "processing_params.min_chars: expected an integer",
                     "name 'c4' is used twice"):
        assert expected in message, expected
    assert message.count(str(path)) >= 8  # each problem names the file


def test_cli_bad_config_exits_2_with_message_and_no_traceback(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"sources": [{"name": "x", "type": "ftp", "tokens": 5}]}))
    proc = subprocess.run([sys.executable, "-m", "lmforge.cli", "corpus", "--config", str(path),
                           "--output-dir", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "error: invalid config" in proc.stderr and "sources[0].type" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_set_overrides_address_sources_by_name_and_scale_budgets(tmp_path, two_sources):
    config = write_config(tmp_path, two_sources)
    cfg = load_corpus_config(config, ["sources.beta.tokens=123", "processing_params.budget_scale=0.5",
                                      "sources.0.split=validation"])
    assert [cfg.budget(s) for s in cfg.sources] == [4000, 62]
    assert cfg.sources[0].split == "validation"
    with pytest.raises(ConfigError, match="no source named or numbered 'gamma'"):
        load_corpus_config(config, ["sources.gamma.tokens=1"])


def test_shipped_configs_validate_with_plan_budgets():
    root = Path(__file__).resolve().parents[1] / "config"
    mix = load_corpus_config(root / "pretrain/corpus/tokenizer_training_mix.json")
    assert {s.dataset: s.tokens for s in mix.sources} == {
        "allenai/c4": 28_000_000, "manu/project_gutenberg": 24_000_000,
        "HuggingFaceFW/fineweb-edu": 24_000_000, "wikimedia/wikipedia": 24_000_000}
    assert mix.processing_params.shard_size == 50000
    big = load_corpus_config(root / "pretrain/corpus/tiny_23M_chinchilla_500M.json")
    assert [s.tokens for s in big.sources] == [150_000_000] * 4
    quick = load_corpus_config(root / "quickstart/corpus.json")
    assert {s.type for s in quick.sources} == {"builtin"}


# ---------------------------------------------------------------- building

def test_exact_shard_contents_single_source(tmp_path):
    docs = [f"Document number {i} says hello to the\r\nworld cafe\u0301." for i in range(5)]
    src = write_jsonl(tmp_path / "d.jsonl", [{"text": d} for d in docs])
    config = write_config(tmp_path, [{"name": "s", "type": "local", "paths": [src], "tokens": 10_000}], shard_size=2)
    assert run(config, tmp_path / "out") == 0
    expected = [{"id": f"s-{i:08d}", "source": "s", "text": f"Document number {i} says hello to the\nworld caf\u00e9."}
                for i in range(5)]
    assert read_shards(tmp_path / "out") == [expected[0:2], expected[2:4], expected[4:5]]
    manifest = load_manifest(tmp_path / "out", "corpus", verify="sha256")
    figures = manifest["figures"]
    assert [s["documents"] for s in figures["shards"]] == [2, 2, 1]
    assert [s["path"] for s in figures["shards"]] == [o["path"] for o in manifest["outputs"]]  # sha256 there
    assert figures["tokens"] == sum(s["tokens"] for s in figures["shards"]) == 5 * -(-len(expected[0]["text"]) // 4)
    assert figures["token_counting"]["method"] == "estimate"
    assert figures["budget_shortfalls"] == {"s": figures["sources"]["s"]["shortfall_tokens"]}  # ran dry: loud


def test_two_sources_budgets_mixing_and_summary(tmp_path, two_sources, capsys):
    config = write_config(tmp_path, two_sources, shard_max_tokens=3000)
    assert run(config, tmp_path / "out") == 0
    summary = capsys.readouterr().out
    assert "Final documents" in summary and "Output shards" in summary and "Peak memory" in summary
    figures = load_manifest(tmp_path / "out", "corpus")["figures"]
    for name, budget in (("alpha", 8000), ("beta", 6000)):
        got = figures["sources"][name]["tokens"]
        assert budget * 0.995 <= got <= budget, (name, got)
        assert figures["sources"][name]["last_document_truncated"]
    shards = read_shards(tmp_path / "out")
    assert all(sum(-(-len(r["text"]) // 4) for r in shard) <= 3000 + 1000 for shard in shards)
    records = [r for shard in shards for r in shard]
    assert figures["documents"] == len(records)
    # mixed: both sources appear in the first half; each keeps its own order
    first_half = {r["source"] for r in records[: len(records) // 2]}
    assert first_half == {"alpha", "beta"}
    for name in ("alpha", "beta"):
        ids = [r["id"] for r in records if r["source"] == name]
        assert ids == sorted(ids)


def test_whole_policy_keeps_the_crossing_document(tmp_path, two_sources):
    config = write_config(tmp_path, two_sources[:1], budget_policy="whole")
    assert run(config, tmp_path / "out") == 0
    src = load_manifest(tmp_path / "out", "corpus")["figures"]["sources"]["alpha"]
    records = [r for shard in read_shards(tmp_path / "out") for r in shard]
    last = -(-len(records[-1]["text"]) // 4)
    assert src["budget"] <= src["tokens"] < src["budget"] + last  # over by less than one document
    assert not src["last_document_truncated"]


def test_determinism_and_seed(tmp_path, two_sources):
    config = write_config(tmp_path, two_sources, shard_max_tokens=2500)
    assert run(config, tmp_path / "one") == 0
    assert run(config, tmp_path / "two") == 0
    assert shard_hashes(tmp_path / "one") == shard_hashes(tmp_path / "two")
    assert run(config, tmp_path / "seed7", "--set", "processing_params.seed=7") == 0
    assert shard_hashes(tmp_path / "seed7") != shard_hashes(tmp_path / "one")


def test_global_dedup_across_sources(tmp_path, tiny_texts):
    base = tiny_texts[:30]
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in base] + [{"text": base[0]}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "  " + t.replace(" ", "  ") + "\n"} for t in base[:10]]
                    + [{"text": t} for t in tiny_texts[30:40]])
    sources = [{"name": "a", "type": "local", "paths": [a], "tokens": 10**6},
               {"name": "b", "type": "local", "paths": [b], "tokens": 10**6}]
    assert run(write_config(tmp_path, sources), tmp_path / "out") == 0
    figures = load_manifest(tmp_path / "out", "corpus")["figures"]
    assert figures["sources"]["a"]["duplicates"] == 1
    assert figures["sources"]["b"]["duplicates"] == 10  # whitespace variants of a's documents
    assert figures["duplicates"] == 11 and figures["documents"] == 40
    assert figures["dedup_rate"] == pytest.approx(11 / 51, abs=1e-6)
    texts = [r["text"] for shard in read_shards(tmp_path / "out") for r in shard]
    assert len(set(texts)) == len(texts) == 40

    assert run(write_config(tmp_path, sources, name="nodedup.json", dedup=False), tmp_path / "nodedup") == 0
    assert load_manifest(tmp_path / "nodedup", "corpus")["figures"]["documents"] == 51


def test_bad_records_are_counted_by_reason_in_manifest(tmp_path):
    good = "A perfectly reasonable document about nothing in particular."
    src = write_jsonl(tmp_path / "mixed.jsonl", [
        {"text": good}, "{broken json", {"title": "no text"}, {"text": None}, {"text": ["list"]},
        {"text": "   "}, {"text": "short"}, {"text": "w" * 5000}, {"text": good + " Again."}])
    with open(src, "ab") as handle:
        handle.write(b'{"text": "bad \xff utf8 here, long enough to pass"}\n')
    config = write_config(tmp_path, [{"name": "m", "type": "local", "paths": [src], "tokens": 1000}],
                          max_line_chars=1000)
    assert run(config, tmp_path / "out") == 0
    figures = load_manifest(tmp_path / "out", "corpus")["figures"]
    assert figures["documents"] == 2
    assert figures["skipped"] == {"malformed_json": 1, "missing_text_field": 1, "null_text": 1,
                                  "non_string_text": 1, "empty": 1, "too_short": 1, "giant_line": 1,
                                  "invalid_utf8": 1}


def test_exact_token_counts_with_a_tokenizer(tmp_path, two_sources, tiny_tokenizer):
    from lmforge.tokenizer.spm import load_tokenizer

    config = write_config(tmp_path, two_sources[:1])
    assert run(config, tmp_path / "out", "--tokenizer-dir", str(tiny_tokenizer)) == 0
    manifest = load_manifest(tmp_path / "out", "corpus")
    figures = manifest["figures"]
    tok = load_tokenizer(tiny_tokenizer)
    assert figures["token_counting"]["method"] == "exact"
    assert figures["token_counting"]["tokenizer_sha256"] == tok.sha256
    assert manifest["tokenizer_sha256"] == tok.sha256  # lineage, as `lmforge verify` reads it
    texts = [r["text"] for shard in read_shards(tmp_path / "out") for r in shard]
    assert sum(len(tok.encode(t)) for t in texts) == figures["tokens"]
    assert 8000 * 0.995 <= figures["tokens"] <= 8000
    assert manifest["inputs"]["tokenizer"]["identity"]


# ---------------------------------------------------------------- resume, idempotence

def test_up_to_date_skips_and_force_rebuilds(tmp_path, two_sources, caplog):
    config = write_config(tmp_path, two_sources)
    assert run(config, tmp_path / "out") == 0
    before = (tmp_path / "out/manifest.json").read_text()
    caplog.clear()
    assert run(config, tmp_path / "out", "--use-cache") == 0
    assert "up to date, skipping (use --force to redo)" in caplog.text
    assert (tmp_path / "out/manifest.json").read_text() == before
    caplog.clear()
    assert run(config, tmp_path / "out", "--use-cache", "--force") == 0
    assert "from cache" in caplog.text  # phase 1 reused, phase 2 redone
    assert shard_hashes(tmp_path / "out") == [o["sha256"] for o in json.loads(before)["outputs"]]


def test_kill_during_phase1_then_use_cache_gives_identical_shards(tmp_path, two_sources, caplog):
    config = write_config(tmp_path, two_sources, cache_part_tokens=1500)
    assert run(config, tmp_path / "clean") == 0
    # alpha needs 6 commits (5 parts + its done marker); the 8th commit is mid-beta
    env = dict(os.environ, **{KILL_AFTER_PARTS_ENV: "8"})
    proc = subprocess.run([sys.executable, "-m", "lmforge.cli", "corpus", "--config", config,
                           "--output-dir", str(tmp_path / "killed"), "--use-cache"], env=env, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    killed = tmp_path / "killed"
    assert not (killed / "manifest.json").exists() and not (killed / "shards").exists()
    alpha = json.loads((killed / "cache/00_alpha/state.json").read_text())
    beta = json.loads((killed / "cache/01_beta/state.json").read_text())
    assert alpha["done"] and not beta["done"] and beta["parts"] >= 1
    caplog.clear()
    assert run(config, killed, "--use-cache") == 0
    assert "alpha: from cache" in caplog.text and "Resuming beta from cache" in caplog.text
    assert shard_hashes(killed) == shard_hashes(tmp_path / "clean")
    clean_figures = load_manifest(tmp_path / "clean", "corpus")["figures"]
    resumed_figures = load_manifest(killed, "corpus")["figures"]
    for key in ("documents", "tokens", "skipped", "duplicates"):
        assert resumed_figures[key] == clean_figures[key]


# ---------------------------------------------------------------- analyze, errors

def test_analyze_only_writes_plan_and_no_shards(tmp_path, two_sources, capsys):
    config = write_config(tmp_path, two_sources)
    assert run(config, tmp_path / "out", "--analyze-only") == 0
    plan = json.loads((tmp_path / "out/plan.json").read_text())
    assert not (tmp_path / "out/shards").exists() and not (tmp_path / "out/manifest.json").exists()
    assert [r["name"] for r in plan["sources"]] == ["alpha", "beta"]
    assert plan["total"]["tokens"] == 14000
    for row in plan["sources"]:
        expected = row["budget_tokens"] / row["tokens_per_document"]
        assert row["estimated_documents"] == pytest.approx(expected, rel=0.01, abs=1)
    out = capsys.readouterr().out
    assert "alpha: ~" in out and "samples" in out and "TOTAL:" in out


def test_source_yielding_nothing_is_an_error_without_manifest(tmp_path, capsys):
    src = write_jsonl(tmp_path / "empty.jsonl", [{"text": ""}, {"other": "x"}, "garbage"])
    config = write_config(tmp_path, [{"name": "void", "type": "local", "paths": [src], "tokens": 100}])
    assert run(config, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "source 'void' yielded no usable documents" in err and "malformed_json=1" in err
    assert not (tmp_path / "out/manifest.json").exists()


def test_missing_local_files_fail_before_any_work(tmp_path, capsys):
    config = write_config(tmp_path, [{"name": "gone", "type": "local", "paths": [str(tmp_path / "no*.jsonl")],
                                      "tokens": 100}])
    assert run(config, tmp_path / "out") == 2
    assert "source 'gone': no file matches" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unwritable_output_dir_is_a_clear_error(tmp_path, two_sources, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert run(write_config(tmp_path, two_sources), blocker / "out") == 2
    assert "is not writable" in capsys.readouterr().err


def test_strict_budgets_turn_a_dry_source_into_an_error(tmp_path, two_sources, capsys):
    sources = [dict(two_sources[0], tokens=10**7)]
    assert run(write_config(tmp_path, sources, strict_budgets=True), tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "strict_budgets" in err and "alpha" in err
    assert not (tmp_path / "out/manifest.json").exists()
    assert run(write_config(tmp_path, sources, name="lenient.json"), tmp_path / "lenient") == 0
    out = capsys.readouterr().out
    assert "BUDGET SHORTFALL: alpha" in out


def test_hub_source_unreachable_names_source_and_mirror_fix(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LMFORGE_MIRROR", str(tmp_path))
    config = write_config(tmp_path, [{"name": "c4", "type": "hf", "dataset": "allenai/c4", "config": "en",
                                      "tokens": 100}])
    assert run(config, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "source 'c4'" in err and "not in the mirror" in err


def test_quickstart_builtin_config_and_describe(tmp_path, capsys):
    import argparse

    from lmforge.stages.corpus import describe

    config = str(Path(__file__).resolve().parents[1] / "config/quickstart/corpus.json")
    args = argparse.Namespace(config=config, set_items=["processing_params.budget_scale=0.05"], tokenizer_dir=None)
    figures = describe(args)
    assert figures["total_tokens"] == "20.00K" and "python_docstrings=15.00K" in figures["sources"]
    assert run(config, tmp_path / "out", "--set", "processing_params.budget_scale=0.05") == 0
    manifest = load_manifest(tmp_path / "out", "corpus")
    assert 20_000 * 0.995 <= manifest["figures"]["tokens"] <= 20_000
    assert {r["source"] for shard in read_shards(tmp_path / "out") for r in shard} == {
        "python_docstrings", "python_help_topics"}


def test_unreachable_hub_without_mirror_names_the_source(tmp_path):
    config = write_config(tmp_path, [{"name": "c4", "type": "hf", "dataset": "allenai/c4", "config": "en",
                                      "tokens": 100}])
    env = {k: v for k, v in os.environ.items() if k != "LMFORGE_MIRROR"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")  # this machine's view of an air-gapped cluster
    proc = subprocess.run([sys.executable, "-m", "lmforge.cli", "corpus", "--config", config,
                           "--output-dir", str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "error: source 'c4': cannot open hub dataset allenai/c4" in proc.stderr
    assert "LMFORGE_MIRROR" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out/manifest.json").exists()
