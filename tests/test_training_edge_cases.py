"""torch without `torch.OutOfMemoryError` (2.4)
must not turn every training error into an AttributeError, and with several ranks a
rank that has no SFT eval batches must still join the loss reduce."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lmforge.data.pretrain_batches import PackedBatches
from lmforge.data.packed import open_packed_dir
from lmforge.model.architecture import ArchitectureConfig, build_model, quiet_transformers
from lmforge.training.loop import CheckpointMeta, TrainingConfig, evaluate, make_accelerator, run_training

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Exploding(PackedBatches):
    def __next__(self):
        raise RuntimeError("boom from the data")


def test_training_errors_stay_themselves_on_torch_without_OutOfMemoryError(tiny_packed, tmp_path, monkeypatch):
    monkeypatch.delattr(torch, "OutOfMemoryError", raising=False)  # as in torch 2.4, which pyproject allows
    quiet_transformers()
    c = TrainingConfig(max_steps=2, per_device_batch_size=2, warmup_steps=0, eval_batches=0, tensorboard=False)
    packed = open_packed_dir(tiny_packed)
    model = build_model(ArchitectureConfig(name="m", vocab_size=400, hidden_size=32, num_layers=1, num_heads=2,
                                           intermediate_size=64, max_position_embeddings=64))
    batches = _Exploding([packed.train], None, micro_batch=2, accumulation=1, seed=0)
    with pytest.raises(RuntimeError, match="boom from the data"):
        run_training(model, batches, None, c, tmp_path / "run", accelerator=make_accelerator(c),
                     meta=CheckpointMeta(stage="pretrain", config={}))


def test_rank_without_sft_eval_batches_still_joins_the_reduce():
    from lmforge.stages.sft import _eval_batches

    t = SimpleNamespace(eval_batches=2, per_device_batch_size=1)
    one_batch = lambda split, bs, pad, limit: [{"input_ids": torch.ones(1, 4, dtype=torch.long)}]  # noqa: E731
    split = lambda d, name: [0]  # noqa: E731 - one val conversation
    ranks = [_eval_batches(["d"], t, 3, SimpleNamespace(process_index=r, num_processes=2), one_batch, split)
             for r in (0, 1)]
    assert len(ranks[0]) == 1 and ranks[1] == []  # not None: rank 1 must still evaluate (and reduce)

    reduced = []
    acc = SimpleNamespace(device=torch.device("cpu"), autocast=None,
                          reduce=lambda tensor, reduction: reduced.append(tensor.clone()) or tensor)
    assert evaluate(torch.nn.Linear(2, 2), ranks[1], acc) == {} and len(reduced) == 1


def test_sft_without_any_val_data_skips_eval_on_every_rank():
    from lmforge.stages.sft import _eval_batches

    t = SimpleNamespace(eval_batches=2, per_device_batch_size=1)
    assert _eval_batches(["d"], t, 3, SimpleNamespace(process_index=0, num_processes=2),
                         lambda *a, **k: [], lambda d, name: []) is None
