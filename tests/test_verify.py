"""`lmforge verify`: the tokenizer lineage table over a run tree built from real artifacts."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from lmforge.artifacts import atomic_write_json, write_manifest
from lmforge.cli import main as cli
from lmforge.tokenizer.spm import copy_tokenizer_files
from lmforge.pipeline.verify import verify_paths

from conftest import make_tokenizer_dir, stdlib_texts


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory) -> Path:
    """A second, different tokenizer (other vocab size) for mismatch cases."""
    return make_tokenizer_dir(tmp_path_factory.mktemp("other_tok"), stdlib_texts(), vocab_size=520)


def _sha(tok: Path) -> str:
    return json.loads((tok / "tokenizer_config.json").read_text())["sha256_hash"]


def _artifact(path: Path, stage: str, sha: str | None, files: dict[str, str] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {"data.txt": stage}).items():
        (path / name).write_text(text)
    write_manifest(path, stage, config={"stage": stage}, outputs=list(files or {"data.txt": ""}),
                   tokenizer_sha256=sha)
    return path


def build_run(root: Path, tokenizer: Path) -> Path:
    """A run tree laid out like the plan's: corpus, tokenizer, pack, SFT data, checkpoints, evals."""
    sha = _sha(tokenizer)
    _artifact(root / "data/datasets/tiny_corpus", "corpus", None)
    shutil.copytree(tokenizer, root / "data/models/tokenizers/spm_32k")
    _artifact(root / "data/processed/tiny_1024", "pack", sha)
    _artifact(root / "data/sft_processed/alpaca_chatml", "sft-data", sha)
    _artifact(root / "data/sft_processed/oasst1_chatml", "sft-data", sha)
    for step in ("step_5", "final"):
        model = root / "checkpoints/pretrain/tiny" / step
        model.mkdir(parents=True)
        names = copy_tokenizer_files(tokenizer, model)
        (model / "model.safetensors").write_bytes(b"weights")
        write_manifest(model, "pretrain", config={}, outputs=["model.safetensors", *names], tokenizer_sha256=sha)
    evals = root / "evaluation_results/pretrain/tiny"
    evals.mkdir(parents=True)
    atomic_write_json(evals / "results.json", {"tokenizer_sha256": sha, "wikitext": {"word_perplexity": 60.0}})
    write_manifest(evals, "eval", config={}, outputs=["results.json"], tokenizer_sha256=sha)
    return root


def test_matching_run_passes_and_prints_every_artifact(tmp_path, tiny_tokenizer, capsys):
    run = build_run(tmp_path / "run", tiny_tokenizer)
    assert cli(["verify", str(run)]) == 0
    out = capsys.readouterr().out
    assert "TOKENIZER SHA256 VALIDATION" in out
    assert _sha(tiny_tokenizer) in out                      # the reference, in full
    for part in ("spm_32k", "tiny_1024", "alpaca_chatml", "oasst1_chatml", "step_5", "final", "pretrain/tiny"):
        assert part in out
    assert "all 8 artifacts agree" in out
    result = verify_paths([run])
    statuses = {r.path.name: r.status for r in result.rows}
    assert statuses["spm_32k"] == "reference" and statuses["tiny_corpus"] == "n/a"
    assert statuses["tiny_1024"] == statuses["final"] == "ok"


def test_mismatched_artifact_fails_naming_it(tmp_path, tiny_tokenizer, other_tokenizer, capsys):
    run = build_run(tmp_path / "run", tiny_tokenizer)
    _artifact(run / "data/sft_processed/oasst1_chatml", "sft-data", _sha(other_tokenizer))
    assert cli(["verify", str(run)]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "oasst1_chatml" in out and "lineage check FAILED" in out
    assert _sha(other_tokenizer)[:16] in out


def test_missing_tokenizer_sha_is_a_missing_link(tmp_path, tiny_tokenizer, capsys):
    run = build_run(tmp_path / "run", tiny_tokenizer)
    _artifact(run / "data/processed/tiny_1024", "pack", None)
    assert cli(["verify", str(run)]) == 1
    out = capsys.readouterr().out
    assert "MISSING" in out and "missing link" in out and "tiny_1024" in out


def test_model_with_foreign_tokenizer_files_fails(tmp_path, tiny_tokenizer, other_tokenizer, capsys):
    run = build_run(tmp_path / "run", tiny_tokenizer)
    copy_tokenizer_files(other_tokenizer, run / "checkpoints/pretrain/tiny/final")
    assert cli(["verify", str(run)]) == 1
    assert "is not the tokenizer its manifest names" in capsys.readouterr().out


def test_tampered_spm_model_fails(tmp_path, tiny_tokenizer, capsys):
    run = build_run(tmp_path / "run", tiny_tokenizer)
    model = run / "data/models/tokenizers/spm_32k/spm.model"
    model.write_bytes(model.read_bytes() + b"\0")
    assert cli(["verify", str(run)]) == 1
    assert "spm.model hashes to" in capsys.readouterr().out


def test_two_tokenizers_or_none_cannot_be_a_reference(tmp_path, tiny_tokenizer, other_tokenizer, capsys):
    run = build_run(tmp_path / "run", tiny_tokenizer)
    shutil.copytree(other_tokenizer, run / "data/models/tokenizers/other")
    assert cli(["verify", str(run)]) == 1
    assert "several different tokenizers" in capsys.readouterr().out
    # Without any tokenizer artifact, --tokenizer names the reference.
    shutil.rmtree(run / "data/models")
    assert cli(["verify", str(run / "data"), str(run / "checkpoints")]) == 1
    assert "no tokenizer artifact found" in capsys.readouterr().out
    assert cli(["verify", str(run / "data"), "--tokenizer", str(tiny_tokenizer)]) == 0


def test_missing_directory_is_a_clear_error(tmp_path, capsys):
    assert cli(["verify", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_json_output(tmp_path, tiny_tokenizer):
    run = build_run(tmp_path / "run", tiny_tokenizer)
    assert cli(["verify", str(run), "--json", str(tmp_path / "v.json")]) == 0
    data = json.loads((tmp_path / "v.json").read_text())
    assert data["ok"] and data["reference"] == _sha(tiny_tokenizer) and len(data["artifacts"]) == 8


def test_plan_jq_fields_agree(tmp_path, tiny_tokenizer):
    """The plan's own checks read these keys; with jq when installed, always with json."""
    run = build_run(tmp_path / "run", tiny_tokenizer)
    files = [(run / "data/models/tokenizers/spm_32k/tokenizer_config.json", ".sha256_hash"),
             (run / "data/processed/tiny_1024/manifest.json", ".tokenizer_sha256"),
             (run / "data/sft_processed/alpaca_chatml/manifest.json", ".tokenizer_sha256"),
             (run / "data/sft_processed/oasst1_chatml/manifest.json", ".tokenizer_sha256")]
    values = {json.loads(path.read_text())[key[1:]] for path, key in files}
    assert values == {_sha(tiny_tokenizer)}
    if shutil.which("jq"):
        out = {subprocess.run(["jq", "-r", key], stdin=path.open(), capture_output=True, text=True,
                              check=True).stdout.strip() for path, key in files}
        assert out == values
