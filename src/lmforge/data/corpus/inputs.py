"""What a corpus run reads: its sources (hub, mirror, local files, built-in), the mirror and the token counter."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterator

from lmforge.data.corpus.schema import CorpusConfig, SourceSpec
from lmforge.data.sources import expand_paths, mirror_files, resolve_mirror, stream_builtin, stream_files, stream_hub
from lmforge.data.text_clean import TokenCounter
from lmforge.errors import ArtifactError, DataError
from lmforge.tokenizer.spm import load_tokenizer


def token_counter(cfg: CorpusConfig) -> TokenCounter:
    """Exact counts with the config's tokenizer, else the chars/4 estimate."""
    if not cfg.tokenizer_dir:
        return TokenCounter()

    if not Path(cfg.tokenizer_dir).is_dir():
        raise ArtifactError(f"tokenizer directory {cfg.tokenizer_dir} not found: train it first (lmforge tokenizer), "
                            "or drop tokenizer_dir / --tokenizer-dir to use the chars/4 estimate")
    return TokenCounter(load_tokenizer(cfg.tokenizer_dir))


def mirror_dir(flag: str | None) -> Path | None:
    """The local hub mirror: the --mirror flag, else $LMFORGE_MIRROR, else none."""

    return resolve_mirror(flag)


def preflight(cfg: CorpusConfig, mirror: Path | None) -> None:
    """Fail before any work when a source's files cannot be found."""

    for source in cfg.sources:
        try:
            if source.type == "local":
                expand_paths(source.paths)
            elif source.type == "hf" and mirror is not None:
                mirror_files(mirror, source.dataset, source.config, source.split)
        except DataError as exc:
            raise DataError(f"source '{source.name}': {exc}") from None


def open_source(source: SourceSpec, mirror: Path | None, skips: Counter) -> Iterator[dict]:
    """The raw records of a source; file-level problems are counted in `skips`."""

    if source.type == "hf":
        return stream_hub(source.dataset, source.config, source.split, mirror=mirror, skips=skips)
    if source.type == "local":
        return stream_files(source.paths, skips=skips)
    return stream_builtin(source.dataset or "python_stdlib")


def where(source: SourceSpec) -> str:
    """Where a source's records come from, for logs and plan.json."""
    if source.type == "hf":
        return f"hub {source.dataset}" + (f" config {source.config}" if source.config else "") + f" split {source.split}"
    if source.type == "local":
        return f"files {', '.join(source.paths)}"
    return f"built-in {source.dataset or 'python_stdlib'}"
