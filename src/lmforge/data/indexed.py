"""Megatron-LM's indexed dataset format (`.bin` + `.idx`, "MMIDIDX"), read and written.

`.bin` holds the token ids of every sequence back to back. `.idx` holds, little-endian:

    9 bytes   b"MMIDIDX\\x00\\x00"
    uint64    version (1)
    uint8     dtype code (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64,
              7 float32, 8 uint16)
    uint64    sequence count S
    uint64    document-index count D
    int32[S]  sequence lengths (in tokens)
    int64[S]  sequence byte offsets into .bin
    int64[D]  document indices: 0, then the sequence count at the end of each document

Files written this way load with Megatron's `IndexedDataset(path_prefix)`.
The reader maps both files; nothing is loaded whole.
"""

from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path

import numpy as np

from lmforge.artifacts import atomic_path
from lmforge.errors import ArtifactError

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
DTYPE_CODES: dict[type, int] = {
    np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5,
    np.float64: 6, np.float32: 7, np.uint16: 8,
}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}


def smallest_token_dtype(vocab_size: int) -> type:
    """uint16 for vocabularies up to 65,536 ids, int32 above (Megatron's own rule)."""
    return np.uint16 if vocab_size <= 65536 else np.int32


class IndexedWriter:
    """Stream sequences into `<prefix>.bin`; `finalize()` writes `<prefix>.idx`.

    Both files appear under their final names only on `finalize()` (temp + rename),
    so an interrupted writer leaves nothing that looks complete.
    """

    def __init__(self, prefix: str | os.PathLike, dtype: type = np.uint16):
        if dtype not in DTYPE_CODES:
            raise ValueError(f"unsupported dtype {dtype}")
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        self._bin_ctx = atomic_path(self.prefix.with_suffix(".bin"))
        self._bin_tmp = self._bin_ctx.__enter__()
        self._bin = open(self._bin_tmp, "wb")
        self._lengths: list[int] = []
        self._doc_index: list[int] = [0]
        self._closed = False

    def add_sequence(self, tokens: np.ndarray | list[int]) -> None:
        array = np.asarray(tokens, dtype=self.dtype)
        self._bin.write(array.tobytes(order="C"))
        self._lengths.append(int(array.size))

    def end_document(self) -> None:
        self._doc_index.append(len(self._lengths))

    def finalize(self) -> None:
        """Write the index and move both files into place."""
        self._bin.close()
        lengths = np.asarray(self._lengths, dtype=np.int32)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        if len(lengths) > 1:
            np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        if self._doc_index[-1] != len(lengths):
            self._doc_index.append(len(lengths))
        doc_index = np.asarray(self._doc_index, dtype=np.int64)
        with atomic_path(self.prefix.with_suffix(".idx")) as idx_tmp:
            with open(idx_tmp, "wb") as f:
                f.write(INDEX_HEADER)
                f.write(struct.pack("<Q", INDEX_VERSION))
                f.write(struct.pack("<B", DTYPE_CODES[self.dtype.type]))
                f.write(struct.pack("<Q", len(lengths)))
                f.write(struct.pack("<Q", len(doc_index)))
                f.write(lengths.tobytes())
                f.write(pointers.tobytes())
                f.write(doc_index.tobytes())
        self._bin_ctx.__exit__(None, None, None)
        self._closed = True

    def abort(self) -> None:
        """Drop the partial .bin (for error paths)."""
        if not self._closed:
            self._bin.close()
            Path(self._bin_tmp).unlink(missing_ok=True)
            self._closed = True

    def __enter__(self) -> "IndexedWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if not self._closed:
                self.finalize()
        else:
            self.abort()


@contextlib.contextmanager
def all_or_nothing(writers: dict):
    """Finalize every writer when the block succeeds; abort every one when it raises,
    so a failed stage leaves no output under its final name. Yields `writers`."""
    try:
        yield writers
        for writer in writers.values():
            writer.finalize()
    except BaseException:
        for writer in writers.values():
            writer.abort()  # a no-op for writers already finalized
        raise


class IndexedDataset:
    """Random access to sequences of `<prefix>.bin/.idx` through memory maps."""

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = Path(prefix)
        idx_path, bin_path = self.prefix.with_suffix(".idx"), self.prefix.with_suffix(".bin")
        for p in (idx_path, bin_path):
            if not p.is_file():
                raise ArtifactError(f"{p} is missing")
        with open(idx_path, "rb") as f:
            header = f.read(len(INDEX_HEADER))
            if header != INDEX_HEADER:
                raise ArtifactError(f"{idx_path} is not a Megatron MMIDIDX index")
            (version,) = struct.unpack("<Q", f.read(8))
            (code,) = struct.unpack("<B", f.read(1))
            (self.sequence_count,) = struct.unpack("<Q", f.read(8))
            (self.document_count,) = struct.unpack("<Q", f.read(8))
            offset = f.tell()
        if version != INDEX_VERSION or code not in CODE_DTYPES:
            raise ArtifactError(f"{idx_path}: unsupported version {version} or dtype code {code}")
        self.dtype = np.dtype(CODE_DTYPES[code])
        index = np.memmap(idx_path, mode="r", dtype=np.uint8)
        s, d = self.sequence_count, self.document_count
        self.sizes = np.frombuffer(index, dtype=np.int32, count=s, offset=offset)
        self.pointers = np.frombuffer(index, dtype=np.int64, count=s, offset=offset + 4 * s)
        self.document_indices = np.frombuffer(index, dtype=np.int64, count=d, offset=offset + 12 * s)
        expected = int(self.sizes.astype(np.int64).sum()) * self.dtype.itemsize
        if bin_path.stat().st_size != expected:
            raise ArtifactError(f"{bin_path} has {bin_path.stat().st_size} bytes, index says {expected}: truncated or mismatched")
        self._bin = np.memmap(bin_path, mode="r", dtype=self.dtype) if expected else np.zeros(0, self.dtype)

    def __len__(self) -> int:
        return int(self.sequence_count)

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = i % len(self)
        start = int(self.pointers[i]) // self.dtype.itemsize
        return self._bin[start:start + int(self.sizes[i])]

    def max_token_id(self, chunk: int = 1 << 24) -> int:
        """Largest id in the .bin, read in chunks (bounded memory on a multi-GB file).
        A negative id (signed dtypes) is returned as is, so callers refuse it too."""
        top = -1
        for start in range(0, len(self._bin), chunk):
            part = self._bin[start:start + chunk]
            if part.dtype.kind == "i" and int(part.min()) < 0:
                return int(part.min())
            top = max(top, int(part.max()))
        return top

    @property
    def total_tokens(self) -> int:
        return int(self.sizes.astype(np.int64).sum())
