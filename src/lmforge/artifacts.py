"""The artifact contract: atomic writes, sha256, manifests and lineage checks.

Every stage writes into its own directory and finishes by writing `manifest.json`
last, atomically. A directory without a manifest is incomplete and is never read as
an input. Stages use only this module for hashing, manifests and lineage; none
hand-rolls JSON or checksums.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from . import __version__
from .errors import ArtifactError, LineageError

MANIFEST_NAME = "manifest.json"
_CHUNK = 1 << 20


# ---------------------------------------------------------------- hashing

def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal data, equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-able value, independent of key order."""
    return sha256_bytes(canonical_json(obj).encode("utf-8"))


# ---------------------------------------------------------------- atomic writes

def _temp_path(path: Path) -> Path:
    # Same directory, so the final rename never crosses a filesystem.
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` on success.

    For writers that want a filename (numpy, sentencepiece, gzip). On error the
    temporary file is removed and `path` is left as it was.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(final)
    try:
        yield tmp
        if tmp.is_dir():
            if final.exists():
                shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """open() that writes to a temporary file and renames it into place on success."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Load JSON or raise ArtifactError naming the file (no traceback for users)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise ArtifactError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{what} {path} is not valid JSON: {exc}") from None


# ---------------------------------------------------------------- output directories

def prepare_output_dir(path: str | os.PathLike) -> Path:
    """Create `path` (if needed) and check it is writable; drop a stale manifest.

    Removing the old manifest first means a run killed half-way leaves a directory
    that reads as incomplete rather than one whose manifest describes other files.
    """
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ArtifactError(f"output directory {out} is not writable: {exc.strerror or exc}") from None
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    return out


def describe_file(path: Path, root: Path) -> dict:
    return {"path": path.relative_to(root).as_posix(), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


# ---------------------------------------------------------------- manifests

def machine_info() -> dict:
    return {"host": platform.node(), "python": platform.python_version(), "platform": platform.platform()}


def write_manifest(
    out_dir: str | os.PathLike,
    stage: str,
    *,
    config: Any,
    outputs: Iterable[str | os.PathLike],
    inputs: dict[str, str | os.PathLike] | None = None,
    figures: dict | None = None,
    tokenizer_sha256: str | None = None,
    extra: dict | None = None,
) -> dict:
    """Hash every output and write `manifest.json` last, atomically.

    `outputs` are paths inside `out_dir`; `inputs` maps a role ("corpus",
    "tokenizer") to an input artifact directory, recorded with its manifest's hash.
    """
    root = Path(out_dir)
    files = []
    for item in outputs:
        p = Path(item)
        p = p if p.is_absolute() else root / p
        if not p.is_file():
            raise ArtifactError(f"{stage}: expected output {p} was not written")
        files.append(describe_file(p, root))
    manifest = {
        "stage": stage,
        "lmforge_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "config": config,
        "config_sha256": sha256_json(config),
        "inputs": {role: describe_input(path) for role, path in (inputs or {}).items()},
        "outputs": files,
        "figures": figures or {},
    }
    if tokenizer_sha256 is not None:
        manifest["tokenizer_sha256"] = tokenizer_sha256
    manifest.update(extra or {})
    atomic_write_json(root / MANIFEST_NAME, manifest)
    return manifest


def describe_input(path: str | os.PathLike) -> dict:
    """An input artifact as recorded in a manifest: its path and its manifest's hash."""
    p = Path(path)
    mf = p / MANIFEST_NAME if p.is_dir() else p
    return {"path": str(p), "manifest_sha256": sha256_file(mf) if mf.is_file() else None}


def load_manifest(
    artifact_dir: str | os.PathLike,
    stage: str | tuple[str, ...] | None = None,
    *,
    verify: str = "size",
) -> dict:
    """Load an artifact's manifest, refusing incomplete or corrupted artifacts.

    verify: "none", "size" (every listed file exists with its size: cheap) or
    "sha256" (every file re-hashed).
    """
    root = Path(artifact_dir)
    if not root.is_dir():
        raise ArtifactError(f"{root} does not exist or is not a directory")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(
            f"{root} has no {MANIFEST_NAME}: the stage that writes it did not finish "
            "(rerun that stage) or this is not an lmforge artifact"
        )
    manifest = read_json(path, "manifest")
    stages = (stage,) if isinstance(stage, str) else stage
    if stages and manifest.get("stage") not in stages:
        raise ArtifactError(
            f"{root} holds a '{manifest.get('stage')}' artifact, expected {' or '.join(stages)}"
        )
    if verify != "none":
        verify_outputs(root, manifest, full=(verify == "sha256"))
    return manifest


def verify_outputs(root: Path, manifest: dict, *, full: bool) -> None:
    """Check each output listed in the manifest; raise naming the first bad file."""
    for entry in manifest.get("outputs", []):
        p = root / entry["path"]
        if not p.is_file():
            raise ArtifactError(f"{p} is listed in {root / MANIFEST_NAME} but missing")
        if p.stat().st_size != entry["bytes"]:
            raise ArtifactError(f"{p} has {p.stat().st_size} bytes, manifest says {entry['bytes']}: corrupted or truncated")
        if full and sha256_file(p) != entry["sha256"]:
            raise ArtifactError(f"{p} fails its sha256 check against {root / MANIFEST_NAME}: corrupted")


def verify_file(root: Path, manifest: dict, relpath: str) -> None:
    """Re-hash one listed output (e.g. a shard just before reading it)."""
    for entry in manifest.get("outputs", []):
        if entry["path"] == relpath:
            p = root / relpath
            if not p.is_file():
                raise ArtifactError(f"{p} is listed in {root / MANIFEST_NAME} but missing")
            if sha256_file(p) != entry["sha256"]:
                raise ArtifactError(f"{p} fails its sha256 check against {root / MANIFEST_NAME}: corrupted")
            return
    raise ArtifactError(f"{relpath} is not listed in {root / MANIFEST_NAME}")


def is_up_to_date(out_dir: str | os.PathLike, stage: str, config: Any, inputs: dict | None = None) -> bool:
    """True when `out_dir` holds a complete artifact made from this config and inputs."""
    try:
        manifest = load_manifest(out_dir, stage)
    except ArtifactError:
        return False
    if manifest.get("config_sha256") != sha256_json(config):
        return False
    recorded = manifest.get("inputs", {})
    for role, path in (inputs or {}).items():
        if recorded.get(role, {}).get("manifest_sha256") != describe_input(path)["manifest_sha256"]:
            return False
    return True


# ---------------------------------------------------------------- lineage

def check_tokenizer_lineage(expected: str, expected_from: str, found: str | None, found_from: str) -> None:
    """Stop when two artifacts were made with different tokenizers."""
    if not found:
        raise LineageError(f"{found_from} records no tokenizer_sha256; cannot prove it was made with {expected_from}")
    if found != expected:
        raise LineageError(
            "tokenizer mismatch:\n"
            f"  {expected_from}: {expected}\n"
            f"  {found_from}: {found}\n"
            "Both must come from the same spm.model; rebuild the later artifact with the right tokenizer."
        )
