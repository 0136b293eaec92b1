"""The stage contract: one runner decides up to date / skip / run, lineage is by content, the
pipeline learns outcomes from the runner, resume refuses other data, and the package layout
keeps stages independent of each other."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_corpus_dir, make_packed_dir, stdlib_texts
from lmforge.artifacts import artifact_identity, atomic_write_json, atomic_write_text, load_manifest, write_manifest
from lmforge.cli import main as cli_main
from lmforge.config import config_from_dict
from lmforge.errors import ArtifactError
from lmforge.pipeline.execute import execute
from lmforge.pipeline.pipeline_file import Pipeline, plan
from lmforge.pipeline.run import RUN_LOCK
from lmforge.pipeline.stage import OUTCOME_ENV, StagePlan, read_outcome, run_stage
from lmforge.data.packing import PackConfig
from lmforge.stages.pack import run_pack
from lmforge.stages.tokenizer import train_tokenizer
from lmforge.tokenizer.training import TokenizerConfig

SRC = Path(__file__).resolve().parents[1] / "src" / "lmforge"


# ---------------------------------------------------------------- layout

def _lmforge_imports(path: Path) -> list[tuple[str, int]]:
    """(module, column) of every `from lmforge... import` / `import lmforge...` in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("lmforge"):
            found.append((node.module, node.col_offset))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append(("." * node.level + (node.module or ""), node.col_offset))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.col_offset) for a in node.names if a.name.startswith("lmforge")]
    return found


def test_stages_never_import_each_other():
    offenders = [f"{path.name} imports {module}" for path in (SRC / "stages").glob("*.py")
                 for module, _ in _lmforge_imports(path) if module.startswith("lmforge.stages")]
    assert not offenders, offenders


def test_lmforge_modules_are_imported_at_module_top_with_absolute_names():
    # lmforge/__init__.py keeps `import lmforge` cheap by loading the Python API on first use.
    allowed = {SRC / "__init__.py"}
    offenders = [f"{path.relative_to(SRC)}: {module}" for path in SRC.rglob("*.py") if path not in allowed
                 for module, column in _lmforge_imports(path) if column > 0 or module.startswith(".")]
    assert not offenders, offenders


def test_module_imports_have_no_cycles():
    """Module-level imports between lmforge modules form no cycle, so any module can be imported first."""
    graph = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(path.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lmforge"):
                deps |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        graph[name] = deps
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        if state.get(module) == 2:
            return
        assert state.get(module) != 1, "import cycle: " + " -> ".join(trail[trail.index(module):] + [module])
        state[module] = 1
        for dep in sorted(graph[module]):
            visit(dep, trail + [module])
        state[module] = 2

    for module in sorted(graph):
        visit(module, [])


# ---------------------------------------------------------------- lineage by content

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A corpus, a tokenizer trained on it and a pack made with both, by the real stages."""
    root = tmp_path_factory.mktemp("contract")
    corpus = make_corpus_dir(root / "corpus", stdlib_texts(120))
    cfg = TokenizerConfig(corpus_dir=str(corpus), vocab_size=400, num_threads=1, held_out_fraction=0.05)
    train_tokenizer(cfg, root / "tok")
    pack_cfg = PackConfig(seq_length=32, workers=1)
    assert run_pack(corpus, root / "tok", root / "pack", pack_cfg) is not None
    return {"root": root, "corpus": corpus, "tok_cfg": cfg, "pack_cfg": pack_cfg}


def test_identity_is_content_not_manifest_bytes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"same bytes")
    first = write_manifest(tmp_path / "a", "demo", config={"k": 1}, outputs=["x.bin"], figures={"seconds": 1.0})
    second = write_manifest(tmp_path / "a", "demo", config={"k": 1}, outputs=["x.bin"], figures={"seconds": 9.0})
    assert first["identity"] == second["identity"] == artifact_identity(second)
    (tmp_path / "a" / "x.bin").write_bytes(b"other bytes")
    third = write_manifest(tmp_path / "a", "demo", config={"k": 1}, outputs=["x.bin"])
    assert third["identity"] != first["identity"]
    fourth = write_manifest(tmp_path / "a", "demo", config={"k": 2}, outputs=["x.bin"])
    assert fourth["identity"] != third["identity"]


def test_forced_identical_tokenizer_rebuild_leaves_the_pack_up_to_date(built, monkeypatch, tmp_path):
    root = built["root"]
    identity_before = load_manifest(root / "tok")["identity"]
    outcome_file = tmp_path / "outcome.json"
    monkeypatch.setenv(OUTCOME_ENV, str(outcome_file))

    train_tokenizer(built["tok_cfg"], root / "tok", force=True)
    assert read_outcome(outcome_file)["status"] == "ran"  # really rebuilt, with the same content:
    assert load_manifest(root / "tok")["identity"] == identity_before

    assert run_pack(built["corpus"], root / "tok", root / "pack", built["pack_cfg"]) is None
    outcome = read_outcome(outcome_file)
    assert (outcome["stage"], outcome["status"]) == ("pack", "skipped")


def test_a_changed_input_makes_the_stage_run_again(built, tmp_path):
    root = built["root"]
    corpus = make_corpus_dir(tmp_path / "corpus", stdlib_texts(120)[::-1])  # same documents, other order
    plan_ = StagePlan("pack", root / "pack", built["pack_cfg"].output_key(), {"corpus": corpus, "tokenizer": root / "tok"})
    calls = []
    outcome = run_stage(plan_, lambda p: calls.append(p) or {"identity": "x"})
    assert outcome.status == "ran" and calls == [plan_]


def test_a_stage_failing_on_its_inputs_leaves_no_output_folder(tmp_path):
    def fail(_plan):
        raise ArtifactError("bad input")

    with pytest.raises(ArtifactError):
        run_stage(StagePlan("demo", tmp_path / "new" / "deeper" / "out", {"k": 1}), fail)
    assert not (tmp_path / "new").exists()  # nor the parents created for it
    (tmp_path / "kept" / "sub").mkdir(parents=True)
    with pytest.raises(ArtifactError):
        run_stage(StagePlan("demo", tmp_path / "kept" / "made" / "out", {"k": 1}), fail)
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["sub"]  # what existed stays

    def fail_after_a_folder(plan):  # a stage that made its cache folder, then met a bad input
        (plan.output_dir / "cache" / "00_source").mkdir(parents=True)
        raise ArtifactError("bad input")

    with pytest.raises(ArtifactError):
        run_stage(StagePlan("demo", tmp_path / "cached" / "out", {"k": 1}), fail_after_a_folder)
    assert not (tmp_path / "cached").exists()

    def fail_after_work(plan):  # ... or after real work a resume can reuse: that is kept
        (plan.output_dir / "cache").mkdir(parents=True)
        (plan.output_dir / "cache" / "part_0.jsonl").write_text("{}\n")
        raise ArtifactError("bad input")

    with pytest.raises(ArtifactError):
        run_stage(StagePlan("demo", tmp_path / "worked" / "out", {"k": 1}), fail_after_work)
    assert (tmp_path / "worked" / "out" / "cache" / "part_0.jsonl").is_file()


def test_a_stage_cannot_write_outside_its_output_even_through_a_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "shards").symlink_to(victim, target_is_directory=True)  # e.g. left by a user, or a hostile archive

    def build(plan):
        atomic_write_text(plan.output_dir / "ok.txt", "inside")
        atomic_write_text(plan.output_dir / "shards" / "x.txt", "through the link")

    with pytest.raises(ArtifactError, match="outside this stage's output directory"):
        run_stage(StagePlan("demo", out, {"k": 1}), build)
    assert (out / "ok.txt").read_text() == "inside" and list(victim.iterdir()) == []
    with pytest.raises(ArtifactError, match="outside"):
        run_stage(StagePlan("demo", out, {"k": 1}), lambda p: atomic_write_text(tmp_path / "elsewhere.txt", "x"))
    assert not (tmp_path / "elsewhere.txt").exists()
    atomic_write_text(tmp_path / "elsewhere.txt", "outside a stage, writes go where asked")


def test_declared_extra_outputs_may_be_written(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    run_stage(StagePlan("demo", tmp_path / "out", {"k": 1}, also_writes=(model,)),
              lambda p: atomic_write_text(model / "README.md", "card"))
    assert (model / "README.md").read_text() == "card"


# ---------------------------------------------------------------- the pipeline reads outcomes

STEP = """import json, os, sys
print(sys.argv[1])  # text that used to be parsed: now it means nothing
path = os.environ["{env}"]
json.dump({{"stage": "demo", "status": sys.argv[2], "output_dir": ".", "seconds": 0.0}}, open(path, "w"))
"""


def test_the_pipeline_learns_each_outcome_from_the_runner_not_the_log(tmp_path, capsys):
    script = tmp_path / "step.py"
    script.write_text(STEP.format(env=OUTCOME_ENV))
    stages = [{"name": "says_skip_but_ran", "verb": "pack", "script": str(script)},
              {"name": "quiet_skip", "verb": "pack", "script": str(script)}]
    pipeline = config_from_dict({"run_dir": str(tmp_path / "run"), "stages": stages}, Pipeline)
    planned = plan(pipeline, tmp_path / "p.json", tmp_path / "run")
    planned[0].command += ["/x is up to date, skipping (use --force to redo)", "ran"]
    planned[1].command += ["nothing to see", "skipped"]
    record = execute(planned, tmp_path / "run", tmp_path / "p.json", 2)
    assert record["stages"]["says_skip_but_ran"]["status"] == "ran"
    assert record["stages"]["quiet_skip"]["status"] == "skipped"


HOLDER = """import sys, time
sys.path.insert(0, {src!r})
from lmforge.artifacts import lock_output_dir
lock_output_dir(sys.argv[1], lock_name={lock!r})
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_lmforge_run_on_the_same_run_dir_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    pipeline = tmp_path / "p.json"
    atomic_write_json(pipeline, {"run_dir": str(run_dir), "stages": [{"name": "v", "verb": "verify",
                                                                     "args": {"paths": str(tmp_path)}}]})
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.format(src=str(SRC.parent), lock=RUN_LOCK),
                               str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert cli_main(["run", str(pipeline), "--no-report"]) == 2
        assert f"being written by pid {holder.pid}" in capsys.readouterr().err
        assert not (run_dir / "logs").exists()
    finally:
        holder.kill()


# ---------------------------------------------------------------- errors

def test_a_bug_shows_its_traceback_and_where_to_report_it(monkeypatch, capsys, tmp_path):
    import lmforge.pipeline.verify as verify

    def broken(_args):
        raise KeyError("an lmforge bug")

    monkeypatch.setattr(verify, "main", broken)
    assert cli_main(["verify", str(tmp_path)]) == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err and "This is a bug in lmforge" in err


# ---------------------------------------------------------------- resume and data identity

ARCH = {"name": "micro", "vocab_size": 400, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 64}


def test_resume_refuses_other_data_under_the_same_path(tmp_path, tiny_tokenizer, tiny_texts, capsys):
    data = make_packed_dir(tmp_path / "data", tiny_tokenizer, tiny_texts)
    atomic_write_json(tmp_path / "arch.json", ARCH)
    atomic_write_json(tmp_path / "train.json", {"architecture": str(tmp_path / "arch.json"), "training": {
        "max_steps": 4, "save_every": 2, "per_device_batch_size": 2, "learning_rate": 1e-3, "warmup_steps": 0,
        "eval_batches": 0, "log_every": 1, "tensorboard": False, "stop_after_steps": 2}})
    argv = ["pretrain", "--config", str(tmp_path / "train.json"), "--data_dirs", str(data),
            "--tokenizer_dir", str(tiny_tokenizer), "--output_dir", str(tmp_path / "out")]
    assert cli_main(argv) == 0
    assert (tmp_path / "out" / "micro" / "step_2").is_dir()

    make_packed_dir(tmp_path / "data", tiny_tokenizer, tiny_texts[::-1])  # other content, same path
    capsys.readouterr()
    assert cli_main([*argv, "--resume", "latest"]) == 2
    err = capsys.readouterr().err
    assert "trained on other data" in err and str(data) in err
