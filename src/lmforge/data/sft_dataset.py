"""SFT data on disk: one directory per dataset, holding per split (`train`, `val`):

    {split}.bin / {split}.idx            token ids, one sequence per conversation
    {split}_mask.bin / {split}_mask.idx  the loss mask (uint8, 1 = learn this token)

both in the Megatron indexed format (`lmforge.data.indexed`), memory-mapped when read.
`SplitWriter` writes a split (sft-data), `SFTSplit` reads one (sft, eval-sft). Batches
over them are `lmforge.data.sft_batches`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from lmforge.data.indexed import IndexedDataset, IndexedWriter, smallest_token_dtype
from lmforge.errors import ArtifactError

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


