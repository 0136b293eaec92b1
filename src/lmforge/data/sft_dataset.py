"""SFT data on disk and in batches.

An SFT data directory holds, per split (`train`, `val`):

    {split}.bin / {split}.idx            token ids, one sequence per conversation
    {split}_mask.bin / {split}_mask.idx  the loss mask (uint8, 1 = learn this token)

both in the Megatron indexed format (`lmforge.data.indexed`), memory-mapped when read.

`WeightedBatches` draws training micro-batches from several such directories with
given weights. Which dataset each example comes from is drawn from a generator seeded
by (seed, micro-batch number); within a dataset, examples follow a fresh permutation
per epoch. Everything is a function of the micro-batch number, so a resumed run draws
exactly the batches the uninterrupted run would have drawn.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from lmforge.data.loader import normalise_weights  # noqa: F401  (re-exported for SFT callers)
from lmforge.data.indexed import IndexedDataset, IndexedWriter, smallest_token_dtype
from lmforge.errors import ArtifactError, ConfigError

SPLITS = ("train", "val")
STAGE = "sft-data"
IGNORE_INDEX = -100  # label value Hugging Face losses skip


def split_files(split: str) -> list[str]:
    return [f"{split}.bin", f"{split}.idx", f"{split}_mask.bin", f"{split}_mask.idx"]


class SplitWriter:
    """Writes one split's token and mask files side by side (atomically, on close)."""

    def __init__(self, out_dir: str | os.PathLike, split: str, vocab_size: int):
        out = Path(out_dir)
        self.tokens = IndexedWriter(out / split, smallest_token_dtype(vocab_size))
        self.mask = IndexedWriter(out / f"{split}_mask", np.uint8)
        self.examples = 0
        self.tokens_written = 0
        self.assistant_tokens = 0

    def add(self, ids: Sequence[int], mask: Sequence[int]) -> None:
        if len(ids) != len(mask):
            raise ValueError("ids and mask differ in length")
        for writer, values in ((self.tokens, ids), (self.mask, mask)):
            writer.add_sequence(values)
            writer.end_document()
        self.examples += 1
        self.tokens_written += len(ids)
        self.assistant_tokens += int(sum(mask))

    def finalize(self) -> None:
        self.tokens.finalize()
        self.mask.finalize()

    def abort(self) -> None:
        self.tokens.abort()
        self.mask.abort()


class SFTSplit:
    """One split of an SFT data directory: example i -> (ids, mask) arrays."""

    def __init__(self, data_dir: str | os.PathLike, split: str):
        root = Path(data_dir)
        self.tokens = IndexedDataset(root / split)
        self.mask = IndexedDataset(root / f"{split}_mask")
        if len(self.tokens) != len(self.mask) or not np.array_equal(self.tokens.sizes, self.mask.sizes):
            raise ArtifactError(f"{root}: {split} tokens and mask files do not match")

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.tokens[i], dtype=np.int64), np.asarray(self.mask[i], dtype=np.int64)


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
        self._next = 0  # global micro-batch number whose draw counts are in self.drawn
        self.drawn = [0] * len(self.splits)

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
        rng = np.random.default_rng([self.seed, index])
        return rng.choice(len(self.splits), size=self.batch_size, p=self.weights)

    def _seek(self, index: int) -> None:
        """Recompute per-dataset draw counts before micro-batch `index` (cheap: no data read)."""
        if index < self._next:
            self._next, self.drawn = 0, [0] * len(self.splits)
        while self._next < index:
            for d in self._choices(self._next):
                self.drawn[d] += 1
            self._next += 1

    def _example_index(self, dataset: int, k: int) -> int:
        size = len(self.splits[dataset])
        epoch, pos = divmod(k, size)
        order = np.random.default_rng([self.seed, 1 + dataset, epoch]).permutation(size)
        return int(order[pos])

    def indices(self, index: int) -> list[tuple[int, int]]:
        """(dataset, example) pairs of micro-batch `index`."""
        self._seek(index)
        pairs = []
        for d in self._choices(index):
            d = int(d)
            pairs.append((d, self._example_index(d, self.drawn[d])))
            self.drawn[d] += 1
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
        total = sum(self.drawn)
        return [n / total if total else 0.0 for n in self.drawn]


def iter_eval_batches(split: SFTSplit, batch_size: int, pad_id: int, limit: int | None = None):
    """Fixed, ordered batches over (the first `limit` examples of) a val split."""
    count = len(split) if limit is None else min(limit, len(split))
    for start in range(0, count, batch_size):
        yield collate([split[i] for i in range(start, min(start + batch_size, count))], pad_id)
