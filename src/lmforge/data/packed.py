"""Opening a packed dataset (the output of `lmforge pack`) for training or inspection.

A packed directory holds train.bin/.idx and val.bin/.idx (Megatron MMIDIDX) and a
manifest.json of stage "pack". Every row holds exactly `seq_length` tokens; a model
is fed input_ids = labels = row and shifts the labels itself.

    from lmforge.data.packed import load_packed_manifest, open_packed
    manifest = load_packed_manifest("data/processed/tiny_23M_1024",
                                    tokenizer_sha256=tok.sha256, tokenizer_from="spm_32k/spm.model")
    train = open_packed("data/processed/tiny_23M_1024", "train")
    row = train[0]            # numpy array of seq_length token ids (memory-mapped)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lmforge.artifacts import cached_file_fact, check_tokenizer_lineage, load_manifest
from lmforge.data.indexed import IndexedDataset
from lmforge.errors import ArtifactError

SPLITS = ("train", "val")


def load_packed_manifest(packed_dir: str | os.PathLike, *, tokenizer_sha256: str | None = None,
                         tokenizer_from: str = "the tokenizer in use", verify: str = "cached") -> dict:
    """The pack's manifest, refusing an incomplete pack or one whose files fail their
    sha256 (hashed on first use, then cached by size/mtime/inode); with
    `tokenizer_sha256`, also refusing a pack made with another tokenizer."""
    manifest = load_manifest(packed_dir, "pack", verify=verify)
    if tokenizer_sha256 is not None:
        check_tokenizer_lineage(tokenizer_sha256, tokenizer_from, manifest.get("tokenizer_sha256"),
                                str(Path(packed_dir) / "manifest.json"))
    return manifest


def open_packed(packed_dir: str | os.PathLike, split: str, *, manifest: dict | None = None,
                tokenizer_sha256: str | None = None, tokenizer_from: str = "the tokenizer in use") -> IndexedDataset:
    """The memory-mapped rows of one split ("train" or "val"), checked against the manifest."""
    if split not in SPLITS:
        raise ArtifactError(f"unknown split {split!r}: a pack has {', '.join(SPLITS)}")
    if manifest is None:
        manifest = load_packed_manifest(packed_dir, tokenizer_sha256=tokenizer_sha256, tokenizer_from=tokenizer_from)
    elif tokenizer_sha256 is not None:
        check_tokenizer_lineage(tokenizer_sha256, tokenizer_from, manifest.get("tokenizer_sha256"),
                                str(Path(packed_dir) / "manifest.json"))
    data = IndexedDataset(Path(packed_dir) / split)
    figures = manifest.get("figures", {})
    seq_length, expected_rows = figures.get("seq_length"), figures.get("sequences", {}).get(split)
    if data.dtype.name != figures.get("dtype") or len(data) != expected_rows:
        raise ArtifactError(f"{Path(packed_dir) / split}.idx does not match its manifest "
                            f"({len(data)} rows of {data.dtype.name}, manifest says {expected_rows} of "
                            f"{figures.get('dtype')})")
    if len(data) and not (data.sizes == seq_length).all():
        raise ArtifactError(f"{Path(packed_dir) / split}.idx has rows that are not {seq_length} tokens long")
    check_token_range(data, figures.get("vocab_size"))
    return data


def check_token_range(data: IndexedDataset, vocab_size: int | None) -> None:
    """Refuse token ids outside the vocabulary (they would crash the embedding lookup).

    The maximum id is computed once per file version and cached like its sha256.
    """
    if not vocab_size or not data.total_tokens:
        return
    bin_path = data.prefix.with_suffix(".bin")
    top = cached_file_fact(bin_path, "max_token_id", lambda _: int(data.max_token_id()))
    if top >= int(vocab_size) or top < 0:
        raise ArtifactError(f"{bin_path} holds token id {top}, outside the vocabulary of {vocab_size}: "
                            "corrupted or packed with another tokenizer (rerun `lmforge pack`)")


@dataclass
class PackedDir:
    """One packed directory: its manifest and its memmapped splits."""

    path: Path
    manifest: dict
    train: IndexedDataset
    val: IndexedDataset | None

    @property
    def tokenizer_sha256(self) -> str | None:
        return self.manifest.get("tokenizer_sha256")

    @property
    def seq_length(self) -> int:
        return int(self.manifest.get("figures", {}).get("seq_length") or self.train.sizes[0])


def open_packed_dir(path: str | Path) -> PackedDir:
    """Open a packed artifact (lmforge.data.packed does the manifest and row-length checks)."""

    root = Path(path)
    if not root.exists():
        raise ArtifactError(f"packed data directory {root} does not exist (run `lmforge pack` first)")
    manifest = load_packed_manifest(root)
    train = open_packed(root, "train", manifest=manifest)
    val = open_packed(root, "val", manifest=manifest) if (root / "val.idx").is_file() else None
    if len(train) == 0:
        raise ArtifactError(f"{root}/train holds no sequences: the corpus was too small for seq_length")
    return PackedDir(root, manifest, train, val)
