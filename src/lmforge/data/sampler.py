"""The mixture sampler that pretraining and SFT share: which row of which source comes next.

A run draws from several sources (packed datasets, SFT datasets) with fixed weights. Every
source is read in a seeded order that changes each epoch, and the rows taken from each
source are counted, so a position is two small numbers per source: resumable exactly, and
reproducible on any number of ranks. Two rules choose the source of the next row:

- `smooth_weighted_choice` (pretraining): the source furthest below its share so far, so
  the mix is exact at every step (no sampling noise in what the model sees);
- `random_weighted_choices` (SFT): independent seeded draws per micro-batch, so examples of
  different datasets mix inside a batch.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lmforge.errors import ConfigError


class EpochOrder:
    """Row `k` of a source of `size` rows, k counting across epochs: each epoch is a
    permutation seeded by `key` and the epoch number. The current epoch's permutation is
    kept, so consecutive rows cost one array lookup, not one permutation each."""

    def __init__(self, size: int, key: Sequence[int]):
        self.size, self.key = int(size), [int(k) for k in key]
        self._epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def row(self, k: int) -> int:
        epoch, position = divmod(int(k), self.size)
        if epoch != self._epoch:
            self._order = np.random.default_rng([*self.key, epoch]).permutation(self.size)
            self._epoch = epoch
        return int(self._order[position])


class SourceMixture:
    """Per-source seeded orders plus how many rows each source has given (the resumable state)."""

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int, key_offset: int = 0):
        self.sizes = [int(n) for n in sizes]
        self.weights = np.asarray(weights, dtype=np.float64)
        self.seed = int(seed)
        # key_offset keeps each caller's historical seeding (pretraining 0, SFT 1), so the
        # rows a given config sees did not change when the two samplers became one.
        self.orders = [EpochOrder(n, (self.seed, i + key_offset)) for i, n in enumerate(self.sizes)]
        self.taken = [0] * len(self.sizes)

    def take(self, source: int) -> tuple[int, int]:
        """The next (source, row) from `source`."""
        row = self.orders[source].row(self.taken[source])
        self.taken[source] += 1
        return source, row

    def smooth_weighted_choice(self) -> int:
        """The source furthest below its weighted share after one more row (ties: lowest index)."""
        target = sum(self.taken) + 1
        return max(range(len(self.sizes)), key=lambda i: (self.weights[i] * target - self.taken[i], -i))

    def random_weighted_choices(self, index: int, count: int) -> np.ndarray:
        """`count` sources drawn with the weights, seeded by (seed, index): the same for a given index."""
        rng = np.random.default_rng([self.seed, index])
        return rng.choice(len(self.sizes), size=count, p=self.weights)

    def share(self) -> list[float]:
        total = sum(self.taken)
        return [n / total if total else 0.0 for n in self.taken]


def normalise_weights(weights: list[float] | None, count: int) -> list[float]:
    """Dataset weights summing to 1 (equal when none are given); ConfigError on a bad list."""
    if not weights:
        return [1.0 / count] * count
    if len(weights) != count:
        raise ConfigError(f"--data_weights has {len(weights)} values for {count} --data_dirs")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"--data_weights must be non-negative with a positive sum, got {weights}")
    total = float(sum(weights))
    return [w / total for w in weights]
