"""`lmforge eval` end to end on local files: outputs, report, caps, idempotence, lineage,
user errors, generations, and the plan's script with its flags."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.cli import build_parser
from lmforge.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
ARTICLES = [
    " = Alpha = \n Alpha is the first letter of the Greek alphabet . It has a value of 1 @,@ 000 in some "
    "systems . \n = = History = = \n The letter 's shape comes from the Phoenician aleph . \n",
    " = Beta = \n Beta is the second letter ( after alpha ) . \" Beta \" is also a test stage . \n",
    " = Gamma = \n Gamma rays carry high energy ; they come from radioactive decay . \n",
]
BOOLQ = [{"question": "is alpha the first letter", "passage": "Alpha is the first letter.", "label": 1, "idx": 0},
         {"question": "is beta the first letter", "passage": "Beta is the second letter.", "label": 0, "idx": 1},
         {"question": "is gamma a ray", "passage": "Gamma rays carry energy.", "answer": True, "title": "Gamma"}]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval_data")
    (root / "wiki.test.raw").write_text("".join(ARTICLES), encoding="utf-8")
    (root / "boolq.jsonl").write_text("".join(json.dumps(r) + "\n" for r in BOOLQ), encoding="utf-8")
    config = {"generation": {"prompts": ["The letter", "Gamma rays"], "max_new_tokens": 6, "samples": 1},
              "runtime": {"max_length": 24}}  # small windows: every article needs several
    (root / "eval.json").write_text(json.dumps(config))
    return {"wikitext": root / "wiki.test.raw", "boolq": root / "boolq.jsonl", "config": root / "eval.json"}


def eval_args(model: Path, tokenizer: Path, out: Path, data: dict, *extra: str) -> list[str]:
    return ["eval", "--model_path", str(model), "--tokenizer_path", str(tokenizer), "--output_dir", str(out),
            "--config", str(data["config"]), "--wikitext-file", str(data["wikitext"]),
            "--boolq-file", str(data["boolq"]), "--device", "cpu", "--log-level", "WARNING", *extra]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_base_model, tiny_tokenizer, data) -> Path:
    out = tmp_path_factory.mktemp("eval_out")
    assert cli_main(eval_args(tiny_base_model, tiny_tokenizer, out, data)) == 0
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_outputs_manifest_and_results(full_run, tiny_tokenizer, tiny_base_model):
    manifest = json.loads((full_run / "manifest.json").read_text())
    assert manifest["stage"] == "eval"
    assert manifest["tokenizer_sha256"] == json.loads((tiny_tokenizer / "tokenizer_config.json").read_text())["sha256_hash"]
    listed = {o["path"] for o in manifest["outputs"]}
    assert listed == {"results.json", "report.md", "generations.jsonl", "wikitext_docs.jsonl", "boolq_items.jsonl"}
    results = json.loads((full_run / "results.json").read_text())
    assert results["model_path"] == str(tiny_base_model) and results["tokenizer_sha256"] == manifest["tokenizer_sha256"]
    assert results["partial"] is False and results["config"]["runtime"]["max_length"] == 24
    wt, bq = results["wikitext"], results["boolq"]
    assert wt["documents"] == 3 and wt["max_length"] == 24 and wt["prefix_token_id"] == 1
    assert bq["examples"] == 3 and bq["gold_yes_rate"] == pytest.approx(2 / 3)
    assert bq["majority_baseline"] == pytest.approx(2 / 3)


def test_corpus_metrics_follow_from_the_per_document_table(full_run):
    results = json.loads((full_run / "results.json").read_text())["wikitext"]
    docs = read_jsonl(full_run / "wikitext_docs.jsonl")
    assert [d["title"] for d in docs] == ["Alpha", "Beta", "Gamma"]
    ll = sum(d["loglikelihood"] for d in docs)
    words = sum(d["words"] for d in docs)
    assert words == sum(len(re.split(r"\s+", a)) for a in ARTICLES)  # counted on the original text
    assert results["word_perplexity"] == pytest.approx(math.exp(-ll / words))
    assert results["bits_per_byte"] == pytest.approx(-ll / sum(d["bytes"] for d in docs) / math.log(2))
    assert results["tokens"] > 3 * 24  # several windows per article were needed


def test_boolq_items_and_report_show_the_bias(full_run):
    items = read_jsonl(full_run / "boolq_items.jsonl")
    assert [i["label"] for i in items] == [1, 0, 1]
    for i in items:
        assert i["prediction"] == (1 if i["ll_yes"] > i["ll_no"] else 0)
    results = json.loads((full_run / "results.json").read_text())
    assert results["boolq"]["yes_rate"] == pytest.approx(sum(i["prediction"] for i in items) / 3)
    report = (full_run / "report.md").read_text()
    assert "| WikiText-2 word perplexity | 45-70 |" in report and "| BoolQ accuracy | 58%-68% |" in report
    assert "model yes-rate" in report and "majority-class baseline 0.6667" in report
    assert "PARTIAL" not in report


def test_generations_are_saved_and_reproducible(full_run, tiny_base_model, tiny_tokenizer):
    records = read_jsonl(full_run / "generations.jsonl")
    assert [(r["prompt"], r["mode"], r["seed"]) for r in records] == [
        ("The letter", "greedy", None), ("The letter", "sampled", 1234),
        ("Gamma rays", "greedy", None), ("Gamma rays", "sampled", 1234)]
    assert all(1 <= r["new_tokens"] <= 6 for r in records)

    from lmforge.evaluation.generation import GenerationSettings, generate_all
    from lmforge.model.loading import load_for_eval

    m = load_for_eval(tiny_base_model, tiny_tokenizer, device="cpu")
    settings = GenerationSettings(max_new_tokens=6, samples=2)
    prompt_ids = lambda p: [1] + m.encoder.encode(p)  # noqa: E731
    run = lambda: generate_all(m.model, prompt_ids, m.encoder.decode, ["The letter"], settings,  # noqa: E731
                               stop_ids=[2], pad_id=3)
    first, second = run(), run()
    assert [r["text"] for r in first] == [r["text"] for r in second]  # seeded: identical
    assert first[0]["text"] == records[0]["text"]  # greedy matches the CLI run
    assert first[1]["text"] == records[1]["text"]  # so does sample 0 (seed 1234)


def test_rerun_is_skipped_and_force_redoes(tmp_path, full_run, tiny_base_model, tiny_tokenizer, data, caplog):
    out = tmp_path / "copy"
    shutil.copytree(full_run, out)
    before = (out / "manifest.json").read_text()
    args = eval_args(tiny_base_model, tiny_tokenizer, out, data)
    args[args.index("--log-level") + 1] = "INFO"
    assert cli_main(args) == 0
    assert "up to date, skipping" in caplog.text
    assert (out / "manifest.json").read_text() == before
    assert cli_main([*args, "--force", "--set", "wikitext.enabled=false"]) == 0  # redone, and a new config
    assert json.loads((out / "manifest.json").read_text())["config_sha256"] != json.loads(before)["config_sha256"]
    assert "wikitext" not in json.loads((out / "results.json").read_text())
    assert not (out / "wikitext_docs.jsonl").exists()  # no stale table from the previous run


def test_caps_are_reported_as_partial(tmp_path, tiny_base_model, tiny_tokenizer, data, capsys):
    args = eval_args(tiny_base_model, tiny_tokenizer, tmp_path, data, "--max-wikitext-docs", "1", "--max-boolq", "2",
                     "--set", "generation.enabled=false")
    assert cli_main(args) == 0
    assert "PARTIAL" in capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["partial"] and results["wikitext"]["partial"] and results["boolq"]["partial"]
    assert results["wikitext"]["documents"] == 1 and results["boolq"]["examples"] == 2
    assert "**PARTIAL**" in (tmp_path / "report.md").read_text()


def test_tokenizer_mismatch_is_a_clear_error(tmp_path, tiny_base_model, tiny_tokenizer, data, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_base_model, model)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["tokenizer_sha256"] = "0" * 64  # trained with another tokenizer
    (model / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    assert cli_main(eval_args(model, tiny_tokenizer, out, data)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: tokenizer mismatch") and "0" * 64 in err and "Traceback" not in err
    assert not (out / "results.json").exists() and not (out / "manifest.json").exists()


def test_user_errors_exit_2_without_traceback(tmp_path, tiny_base_model, tiny_tokenizer, data, capsys):
    missing = eval_args(tiny_base_model, tiny_tokenizer, tmp_path / "a", data)
    missing[missing.index("--boolq-file") + 1] = str(tmp_path / "nope.jsonl")
    assert cli_main(missing) == 2
    assert "BoolQ file not found" in capsys.readouterr().err
    bad = eval_args(tiny_base_model, tiny_tokenizer, tmp_path / "b", data, "--set", "runtime.batch_size=0")
    assert cli_main(bad) == 2
    assert "runtime.batch_size: must be >= 1" in capsys.readouterr().err
    assert cli_main(eval_args(tmp_path, tiny_tokenizer, tmp_path / "c", data)) == 2
    assert "has no manifest.json" in capsys.readouterr().err


def test_plan_flags_default_config_and_describe(tmp_path, tiny_base_model, tiny_tokenizer):
    module, parser = build_parser("eval")
    args = parser.parse_args(["--model_path", "checkpoints/pretrain/tiny/final", "--tokenizer_path",
                              "data/models/tokenizers/spm_32k", "--output_dir", "evaluation_results/pretrain/tiny",
                              "--log-level", "INFO"])
    cfg = module.build_config(args)  # the shipped config/evaluation/pretrain_standard.json
    assert cfg.expected.wikitext_word_perplexity == [45, 70] and cfg.expected.boolq_accuracy == [0.58, 0.68]
    assert cfg.wikitext.hub_id == "EleutherAI/wikitext_document_level" and cfg.boolq.hub_id == "aps/super_glue"
    info = module.describe(args)
    assert "all documents" in info["wikitext"] and "all questions" in info["boolq"]
    quick = parser.parse_args(["--model_path", "m", "--tokenizer_path", "t", "--output_dir", "o",
                               "--config", str(REPO / "config/quickstart/eval.json")])
    assert "5 documents" in module.describe(quick)["wikitext"]


def test_script_help_is_fast_and_lists_the_plan_flags():
    proc = subprocess.run([sys.executable, str(REPO / "scripts/50_evaluate_pretrain.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for flag in ("--model_path", "--tokenizer_path", "--output_dir", "--wikitext-file", "--boolq-file",
                 "--max-wikitext-docs", "--max-boolq", "--batch-size", "--device", "--mirror", "--set", "--force"):
        assert flag in proc.stdout


def test_changed_local_data_is_not_up_to_date(tmp_path, tiny_base_model, tiny_tokenizer, data):
    local = {**data, "wikitext": tmp_path / "wiki.raw"}
    local["wikitext"].write_text(ARTICLES[0])
    out = tmp_path / "out"
    args = eval_args(tiny_base_model, tiny_tokenizer, out, local, "--set", "generation.enabled=false")
    assert cli_main(args) == 0
    local["wikitext"].write_text(ARTICLES[0] + ARTICLES[1])
    assert cli_main(args) == 0
    assert json.loads((out / "results.json").read_text())["wikitext"]["documents"] == 2
