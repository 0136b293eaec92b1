"""Zero-shot tasks through lm-evaluation-harness (lmforge.evaluation.zeroshot), on made-up fixture data.

The task data are tiny invented items in each dataset's hub schema (tests/zeroshot_fixtures.py),
under a temporary mirror; the harness's own task files score them in-process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lmforge.cli import main as cli_main
from lmforge.evaluation.zeroshot import near_chance
from lmforge.evaluation.zeroshot_tasks import TASKS
from zeroshot_fixtures import write_task_mirror

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]
ALL = ",".join(TASKS)
OFF = ["--set", "wikitext.enabled=false", "--set", "boolq.enabled=false", "--set", "generation.enabled=false"]


def harness_task_yaml(name: str) -> dict:
    """The installed harness's YAML for a task (its `include:` merged under it; !function tags kept as text)."""
    lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness not installed (pip install -e .[eval])")
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    folder = Path(lm_eval.__file__).parent / "tasks" / TASKS[name].task_dir
    for path in sorted(folder.glob("*.yaml")):
        data = yaml.load(path.read_text(), Loader=Loader)
        if isinstance(data, dict) and data.get("task") == name:
            if "include" in data:
                base = yaml.load((folder / data["include"]).read_text(), Loader=Loader)
                data = {**base, **data}
            return data
    raise AssertionError(f"no YAML for {name} under {folder}")


@pytest.mark.parametrize("name", list(TASKS))
def test_task_table_matches_the_harness_task_files(name):
    spec, task = harness_task_yaml(name), TASKS[name]
    assert spec["dataset_path"] == task.hub_id
    assert spec.get("dataset_name") == task.config
    assert spec[task.split_key] == task.split
    if task.split_key == "validation_split":
        assert not spec.get("test_split"), "the harness would score its test split"


@pytest.fixture(scope="module")
def task_mirror(tmp_path_factory) -> Path:
    return write_task_mirror(tmp_path_factory.mktemp("task_mirror"))


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory, tiny_base_model, tiny_tokenizer, task_mirror) -> Path:
    pytest.importorskip("lm_eval")
    out = tmp_path_factory.mktemp("zeroshot_eval")
    assert cli_main(["eval", "--model_path", str(tiny_base_model), "--tokenizer_path", str(tiny_tokenizer),
                     "--output_dir", str(out), "--mirror", str(task_mirror), "--tasks", ALL, "--device", "cpu",
                     "--log-level", "WARNING", *OFF]) == 0
    return out


def test_suite_results_carry_stderr_chance_and_flags(suite_run):
    results = json.loads((suite_run / "results.json").read_text())
    zs = results["zero_shot"]
    assert list(zs["tasks"]) == list(TASKS) and zs["num_fewshot"] == 0 and zs["harness_version"]
    t = zs["tasks"]
    expected_docs = {"piqa": 3, "arc_easy": 3, "arc_challenge": 2, "hellaswag": 2, "winogrande": 2, "copa": 2,
                     "social_iqa": 2, "lambada_openai": 2}
    assert {n: r["documents"] for n, r in t.items()} == expected_docs
    # chance from the scored documents' answer counts (arc_easy: 4, 3 and 4 choices)
    assert t["piqa"]["chance"] == 0.5 and t["hellaswag"]["chance"] == 0.25
    assert t["arc_easy"]["chance"] == pytest.approx((1 / 4 + 1 / 3 + 1 / 4) / 3, abs=1e-6)
    assert t["social_iqa"]["chance"] == pytest.approx(1 / 3, abs=1e-6) and t["lambada_openai"]["chance"] == 0.0
    # the normalised variant exactly where the harness's task defines one
    assert {n for n, r in t.items() if "acc_norm" in r} == {"piqa", "arc_easy", "arc_challenge", "hellaswag"}
    assert "perplexity" in t["lambada_openai"]
    for name, r in t.items():
        assert 0.0 <= r["acc"] <= 1.0 and r["acc_stderr"] is not None, name
        assert r["near_chance"] == near_chance(r["acc"], r["acc_stderr"], r["chance"], r["documents"]), name
    assert results["partial"] is False
    report = (suite_run / "report.md").read_text()
    assert "## Zero-shot tasks (lm-evaluation-harness" in report and "| piqa | 3 |" in report
    manifest = json.loads((suite_run / "manifest.json").read_text())
    assert "zeroshot_piqa_acc" in manifest["figures"]


def test_near_chance_uses_a_chance_floor_on_tiny_samples():
    assert near_chance(0.0, 0.0, 0.5, 2)                 # 0/2 right: harness stderr 0, still noise
    assert not near_chance(0.9, 0.01, 0.5, 2000)         # clearly above chance
    assert near_chance(0.52, 0.011, 0.5, 2000)           # within 2 stderr
    assert not near_chance(0.3, 0.01, 0.0, 1000)         # lambada: any accuracy above 0 by 2 stderr


def test_limit_marks_results_partial(tmp_path, tiny_base_model, tiny_tokenizer, task_mirror):
    pytest.importorskip("lm_eval")
    assert cli_main(["eval", "--model_path", str(tiny_base_model), "--tokenizer_path", str(tiny_tokenizer),
                     "--output_dir", str(tmp_path), "--mirror", str(task_mirror), "--tasks", "piqa", "--device", "cpu",
                     "--set", "zero_shot.limit=1", "--log-level", "WARNING", *OFF]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["zero_shot"]["tasks"]["piqa"]["documents"] == 1
    assert results["zero_shot"]["partial"] is True and results["partial"] is True


def test_missing_task_data_is_one_clear_error(tmp_path, tiny_base_model, tiny_tokenizer, capsys):
    pytest.importorskip("lm_eval")
    mirror = write_task_mirror(tmp_path / "mirror", ["piqa"])
    rc = cli_main(["eval", "--model_path", str(tiny_base_model), "--tokenizer_path", str(tiny_tokenizer),
                   "--output_dir", str(tmp_path / "out"), "--mirror", str(mirror), "--tasks", "piqa,hellaswag",
                   *OFF])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "hellaswag" in err and "Rowan/hellaswag" in err and str(mirror / "Rowan/hellaswag/validation") in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_unknown_task_and_missing_harness_are_clear_errors(tmp_path, tiny_base_model, tiny_tokenizer, capsys,
                                                           monkeypatch):
    base = ["eval", "--model_path", str(tiny_base_model), "--tokenizer_path", str(tiny_tokenizer),
            "--output_dir", str(tmp_path / "out"), *OFF]
    assert cli_main(base + ["--tasks", "piqa,mmlu"]) == 2
    assert "unknown zero-shot task(s) mmlu" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if lm_eval were not installed
    assert cli_main(base + ["--tasks", "piqa"]) == 2
    err = capsys.readouterr().err
    assert "lmforge[eval]" in err and "Traceback" not in err


def test_eval_sft_runs_the_same_suite_from_its_config(tmp_path, tiny_base_model, tiny_tokenizer, task_mirror):
    pytest.importorskip("lm_eval")
    cfg = json.loads((ROOT / "config/quickstart/sft_eval.json").read_text())
    cfg["zero_shot"] = {"tasks": ["copa", "winogrande"]}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    out = tmp_path / "sft_eval" / "results.json"
    assert cli_main(["eval-sft", "--config", str(tmp_path / "cfg.json"), "--model_path", str(tiny_base_model),
                     "--tokenizer_path", str(tiny_tokenizer), "--output_file", str(out), "--mirror", str(task_mirror),
                     "--set", "sft_perplexity.enabled=false", "--set", "boolq.enabled=false",
                     "--set", "smoke.enabled=false", "--log-level", "WARNING"]) == 0
    tasks = json.loads(out.read_text())["zero_shot"]["tasks"]
    assert list(tasks) == ["copa", "winogrande"] and tasks["copa"]["chance"] == 0.5
    assert "## Zero-shot tasks" in (out.parent / "report.md").read_text()


def test_report_table_puts_pretrain_and_sft_side_by_side(tmp_path, tiny_base_model, tiny_tokenizer, task_mirror):
    """REPORT.md's evaluation table from real eval and eval-sft outputs of the same tasks."""
    pytest.importorskip("lm_eval")
    from lmforge.pipeline.report import write_report

    run = tmp_path / "run"
    common = ["--model_path", str(tiny_base_model), "--tokenizer_path", str(tiny_tokenizer), "--mirror",
              str(task_mirror), "--tasks", "piqa,copa", "--log-level", "WARNING"]
    assert cli_main(["eval", "--output_dir", str(run / "evaluation_results/pretrain/tiny"), "--device", "cpu",
                     *common, *OFF]) == 0
    assert cli_main(["eval-sft", "--config", str(ROOT / "config/quickstart/sft_eval.json"), "--output_file",
                     str(run / "evaluation_results/sft/tiny/results.json"), "--set", "sft_perplexity.enabled=false",
                     "--set", "boolq.enabled=false", "--set", "smoke.enabled=false", *common]) == 0
    text = write_report(run).read_text()
    assert "## Evaluation: all tasks, pretrain against SFT" in text
    pre = json.loads((run / "evaluation_results/pretrain/tiny/results.json").read_text())["zero_shot"]["tasks"]
    row = next(line for line in text.splitlines() if line.startswith("| piqa | acc |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "0.500" and cells[3].startswith(f"{pre['piqa']['acc']:.4f} ± ")
    assert cells[3].endswith("(≈ chance)") == pre["piqa"]["near_chance"] and cells[4] != "-"
    assert any(line.startswith("| piqa | acc_norm |") for line in text.splitlines())
    assert not any(line.startswith("| copa | acc_norm |") for line in text.splitlines())


def test_in_process_scores_equal_the_harness_loading_the_model_itself(suite_run, tiny_base_model, tiny_tokenizer,
                                                                      task_mirror):
    """Wrapping the already-loaded model changes nothing: the harness's own `hf` model, loading the same
    directory, gives the same log-likelihood for every choice of every document."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from lmforge.data.sources import resolve_mirror
    from lmforge.evaluation.zeroshot import ZeroShotSettings, preflight

    entries = preflight(ZeroShotSettings(tasks=list(TASKS)), resolve_mirror(str(task_mirror)))
    root = Path(lm_eval.__file__).parent / "tasks"
    manager = TaskManager(include_defaults=False, include_path=sorted({str(root / t.task_dir) for t in TASKS.values()}))
    theirs = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(tiny_base_model), "tokenizer": str(tiny_tokenizer),
                                "dtype": "float32"},
        tasks=[{"group": "parity", "task": entries}], task_manager=manager, batch_size=8, device="cpu",
        log_samples=True, bootstrap_iters=0)
    mine = [json.loads(line) for line in (suite_run / "zero_shot_items.jsonl").read_text().splitlines()]
    assert len(mine) == sum(len(theirs["samples"][t]) for t in TASKS) == 18
    by_key = {(r["task"], r["doc_id"]): r for r in mine}
    for task in TASKS:
        for sample in theirs["samples"][task]:
            row = by_key[(task, sample["doc_id"])]
            assert row["loglikelihoods"] == pytest.approx([r[0][0] for r in sample["resps"]], rel=1e-5), task
            assert row["acc"] == sample["acc"], task


def test_task_data_in_the_wrong_schema_is_one_clear_error(tmp_path, tiny_base_model, tiny_tokenizer, capsys):
    pytest.importorskip("lm_eval")
    bad = tmp_path / "mirror/baber/piqa/validation/data.jsonl"
    bad.parent.mkdir(parents=True)
    bad.write_text(json.dumps({"question": "no goal field here", "sol1": "a", "sol2": "b", "label": 0}) + "\n")
    rc = cli_main(["eval", "--model_path", str(tiny_base_model), "--tokenizer_path", str(tiny_tokenizer),
                   "--output_dir", str(tmp_path / "out"), "--mirror", str(tmp_path / "mirror"), "--tasks", "piqa",
                   "--device", "cpu", *OFF])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "'goal' is undefined" in err and "hub schema" in err
    assert not (tmp_path / "out" / "manifest.json").exists()
