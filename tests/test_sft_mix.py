"""Weighted sampling across SFT datasets: realised mix, reproducibility, exact resume, labels."""

from __future__ import annotations

import numpy as np
import pytest

from lmforge.errors import ConfigError
from lmforge.data.sft_batches import WeightedBatches, collate
from lmforge.data.sampler import normalise_weights
from lmforge.data.sft_dataset import IGNORE_INDEX, SFTSplit, SplitWriter


def make_split(root, n: int, marker: int):
    """A data dir whose train examples all start with `marker` (to tell datasets apart)."""
    root.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n), ("val", 2)):
        writer = SplitWriter(root, split, vocab_size=400)
        for i in range(count):
            length = 3 + i % 5
            writer.add([marker] + [10 + i] * (length - 1), [0] + [1] * (length - 1))
        writer.finalize()
    return SFTSplit(root, "train")


@pytest.fixture
def two_splits(tmp_path):
    return [make_split(tmp_path / "a", 50, 101), make_split(tmp_path / "b", 7, 202)]


def test_realised_mix_within_tolerance(two_splits):
    batches = WeightedBatches(two_splits, [0.7, 0.3], batch_size=4, pad_id=3, seed=1)
    seen = [0, 0]
    for _ in range(500):
        batch = next(batches)
        for row in batch["input_ids"]:
            seen[0 if row[0] == 101 else 1] += 1
    realised = batches.realised_mix()
    assert realised == pytest.approx([s / 2000 for s in seen])
    assert abs(realised[0] - 0.7) < 0.03


def test_every_example_once_per_epoch(two_splits):
    batches = WeightedBatches(two_splits, [0.5, 0.5], batch_size=7, pad_id=3, seed=2)
    small = [i for n in range(40) for d, i in batches.indices(n) if d == 1]
    first_epoch = small[:7]
    assert sorted(first_epoch) == list(range(7))


def test_resume_reads_the_same_batches(two_splits):
    straight = WeightedBatches(two_splits, [0.7, 0.3], batch_size=4, pad_id=3, seed=3)
    reference = [next(straight) for _ in range(30)]
    first = WeightedBatches(two_splits, [0.7, 0.3], batch_size=4, pad_id=3, seed=3)
    for _ in range(12):
        next(first)
    state = first.state_dict()
    resumed = WeightedBatches(two_splits, [0.7, 0.3], batch_size=4, pad_id=3, seed=3)
    resumed.load_state_dict(state)
    for ref in reference[12:]:
        got = next(resumed)
        assert all(torch_equal(got[k], ref[k]) for k in ref)
    other = WeightedBatches(two_splits, [0.5, 0.5], batch_size=4, pad_id=3, seed=3)
    with pytest.raises(ConfigError):
        other.load_state_dict(state)


def test_ranks_take_disjoint_interleaved_batches(two_splits):
    single = WeightedBatches(two_splits, [0.7, 0.3], batch_size=2, pad_id=3, seed=4)
    expected = [single.indices(n) for n in range(10)]
    ranks = [WeightedBatches(two_splits, [0.7, 0.3], batch_size=2, pad_id=3, seed=4, rank=r, world_size=2)
             for r in range(2)]
    got = [ranks[n % 2].indices(n) for n in range(10)]
    assert got == expected


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_collate_labels_only_on_mask():
    batch = collate([(np.array([1, 7, 8, 9]), np.array([0, 0, 1, 1])), (np.array([1, 5]), np.array([0, 1]))], pad_id=3)
    assert batch["input_ids"].tolist() == [[1, 7, 8, 9], [1, 5, 3, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 8, 9], [IGNORE_INDEX, 5, IGNORE_INDEX, IGNORE_INDEX]]


def test_weights_validation():
    assert normalise_weights([0.7, 0.3], 2) == pytest.approx([0.7, 0.3])
    assert normalise_weights([7, 3], 2) == pytest.approx([0.7, 0.3])
    assert normalise_weights(None, 4) == [0.25] * 4
    for bad in ([1.0], [0.5, -0.5], [0, 0]):
        with pytest.raises(ConfigError):
            normalise_weights(bad, 2)
