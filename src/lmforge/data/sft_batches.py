"""SFT batches: right-padded micro-batches with masked labels, drawn across datasets.

`WeightedBatches` draws training micro-batches from several SFT data directories with
given weights, through the mixture sampler pretraining uses too (`lmforge.data.sampler`):
which dataset each example comes from is drawn from a generator seeded by (seed,
micro-batch number); within a dataset, examples follow a fresh permutation per epoch.
Everything is a function of the micro-batch number, so a resumed run draws exactly the
batches the uninterrupted run would have drawn.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lmforge.data.sampler import SourceMixture
from lmforge.data.sft_dataset import IGNORE_INDEX, SFTSplit
from lmforge.errors import ConfigError


def collate(examples: Sequence[tuple[np.ndarray, np.ndarray]], pad_id: int) -> dict:
    """Right-padded tensors: input_ids, attention_mask, labels (-100 off the mask).

    Hugging Face causal LMs shift labels inside the model, so labels[t] = ids[t] marks
    token t as a target of the prediction made at t-1.
    """
    import torch

    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, mask) in enumerate(examples):
        n = len(ids)
        ids_t = torch.as_tensor(ids, dtype=torch.long)
        input_ids[row, :n] = ids_t
        attention[row, :n] = 1
        labels[row, :n] = torch.where(torch.as_tensor(mask, dtype=torch.bool), ids_t, IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


class WeightedBatches:
    """Micro-batches drawn across datasets with fixed weights, reproducible by index."""

    def __init__(self, splits: Sequence[SFTSplit], weights: Sequence[float], batch_size: int,
                 pad_id: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if any(len(s) == 0 for s in splits):
            raise ConfigError("an SFT data directory has an empty train split")
        self.splits = list(splits)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.seed = seed
        # Ranks take interleaved micro-batches of one global stream: rank r gets r, r+W, r+2W...
        self.rank, self.world_size = rank, world_size
        self.position = 0  # micro-batches this rank has returned (the resumable state)
        self._next = 0  # global micro-batch number whose draw counts are in the mixture
        self.mixture = SourceMixture([len(s) for s in self.splits], self.weights, seed, key_offset=1)

    @property
    def drawn(self) -> list[int]:
        """Examples drawn from each dataset so far (all ranks)."""
        return self.mixture.taken

    # BatchSource protocol (lmforge.training.loop): an iterator with a resumable position.
    def __iter__(self) -> "WeightedBatches":
        return self

    def __next__(self) -> dict:
        batch = self.batch(self.position * self.world_size + self.rank)
        self.position += 1
        return batch

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed, "weights": self.weights.tolist()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") != self.seed or not np.allclose(state.get("weights", []), self.weights):
            raise ConfigError("cannot resume: the data seed or --data_weights differ from the checkpoint's")
        self.position = int(state["position"])

    def _choices(self, index: int) -> np.ndarray:
        return self.mixture.random_weighted_choices(index, self.batch_size)

    def _seek(self, index: int) -> None:
        """Recompute per-dataset draw counts before micro-batch `index` (cheap: no data read)."""
        if index < self._next:
            self._next, self.mixture.taken = 0, [0] * len(self.splits)
        while self._next < index:
            for d in self._choices(self._next):
                self.mixture.taken[int(d)] += 1
            self._next += 1

    def indices(self, index: int) -> list[tuple[int, int]]:
        """(dataset, example) pairs of micro-batch `index`."""
        self._seek(index)
        pairs = [self.mixture.take(int(d)) for d in self._choices(index)]
        self._next += 1
        return pairs

    def batch(self, index: int) -> dict:
        """Collated micro-batch number `index` (0-based, counting every micro-batch)."""
        return collate([self.splits[d][i] for d, i in self.indices(index)], self.pad_id)

    def mix_after(self, micro_batches: int) -> list[float]:
        """Share of examples from each dataset over the first `micro_batches` global micro-batches
        (computed from the draws alone, no data read; the run's mix is known before it starts)."""
        counts = np.zeros(len(self.splits), dtype=np.int64)
        for index in range(micro_batches):
            counts += np.bincount(self._choices(index), minlength=len(self.splits))
        total = int(counts.sum())
        return [float(c) / total if total else 0.0 for c in counts]

    def realised_mix(self) -> list[float]:
        """Share of examples drawn from each dataset so far."""
        return self.mixture.share()


def iter_eval_batches(split: SFTSplit, batch_size: int, pad_id: int, limit: int | None = None):
    """Fixed, ordered batches over (the first `limit` examples of) a val split."""
    count = len(split) if limit is None else min(limit, len(split))
    for start in range(0, count, batch_size):
        yield collate([split[i] for i in range(start, min(start + batch_size, count))], pad_id)
