"""`lmforge pretrain --init_from DIR`: training continues from existing weights; another shape or
another tokenizer is refused with one clear message before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lmforge.artifacts import atomic_write_json
from lmforge.cli import main as cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ARCH = {"name": "micro", "vocab_size": 400, "hidden_size": 64, "num_layers": 2, "num_heads": 2,
        "intermediate_size": 128, "max_position_embeddings": 64}
TRAINING = {"max_steps": 4, "per_device_batch_size": 4, "learning_rate": 3e-3, "warmup_steps": 0,
            "eval_batches": 1, "log_every": 1, "tensorboard": False, "seed": 3}


def config(root: Path, name: str, arch: dict, **training) -> Path:
    atomic_write_json(root / f"{name}_arch.json", arch)
    atomic_write_json(root / f"{name}.json", {"architecture": str(root / f"{name}_arch.json"),
                                               "training": {**TRAINING, **training}})
    return root / f"{name}.json"


def pretrain(root: Path, cfg: Path, tok: Path, packed: Path, out: str, *extra: str) -> int:
    return cli(["pretrain", "--config", str(cfg), "--data_dirs", str(packed), "--tokenizer_dir", str(tok),
                "--output_dir", str(root / out), "--log-level", "WARNING", *extra])


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_tokenizer, tiny_packed):
    root = tmp_path_factory.mktemp("init_from")
    assert pretrain(root, config(root, "a", ARCH), tiny_tokenizer, tiny_packed, "a") == 0
    return root, root / "a" / "micro" / "final"


def weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


def test_continues_from_the_given_weights(source, tiny_tokenizer, tiny_packed):
    import torch

    root, start = source
    # Learning rate 0: one step changes nothing, so final/ must hold exactly the starting weights.
    frozen = config(root, "b", ARCH, max_steps=1, learning_rate=0.0, weight_decay=0.0)
    assert pretrain(root, frozen, tiny_tokenizer, tiny_packed, "b", "--init_from", str(start)) == 0
    before, after = weights(start), weights(root / "b" / "micro" / "final")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    manifest = json.loads((root / "b" / "micro" / "final" / "manifest.json").read_text())
    assert manifest["inputs"]["init_from"]["path"] == str(start)
    assert manifest["config"]["init_from"]["weights_sha256"]["model.safetensors"]
    # And it really trains on from there: a normal step moves away from the start, from a lower loss.
    moving = config(root, "c", ARCH, max_steps=2)
    assert pretrain(root, moving, tiny_tokenizer, tiny_packed, "c", "--init_from", str(start)) == 0
    scratch = [json.loads(x)["loss"] for x in (root / "a" / "micro" / "metrics.jsonl").read_text().splitlines()
               if '"loss"' in x]
    warm = [json.loads(x)["loss"] for x in (root / "c" / "micro" / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in x]
    assert warm[0] < scratch[0] - 0.1


def test_another_shape_is_refused_before_writing(source, tiny_tokenizer, tiny_packed, capsys):
    root, start = source
    wider = config(root, "d", {**ARCH, "hidden_size": 32})
    assert pretrain(root, wider, tiny_tokenizer, tiny_packed, "d", "--init_from", str(start)) == 2
    err = capsys.readouterr().err
    assert "does not fit the architecture" in err and "hidden_size 64 vs 32" in err and "Traceback" not in err
    assert not (root / "d").exists()


def test_another_tokenizer_is_refused(source, tiny_tokenizer, tiny_packed, capsys, tmp_path):
    root, start = source
    other = tmp_path / "other"
    shutil.copytree(start, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["tokenizer_sha256"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    assert pretrain(root, config(root, "e", ARCH), tiny_tokenizer, tiny_packed, "e", "--init_from", str(other)) == 2
    assert "trained with tokenizer 0000000000000000" in capsys.readouterr().err
    assert pretrain(root, config(root, "f", ARCH), tiny_tokenizer, tiny_packed, "f", "--init_from",
                    str(tmp_path / "nope")) == 2
    assert "not a model directory" in capsys.readouterr().err
