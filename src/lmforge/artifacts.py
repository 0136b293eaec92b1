"""The artifact contract: atomic writes, sha256, manifests and lineage checks.

Every stage writes into its own directory and finishes by writing `manifest.json`
last, atomically. A directory without a manifest is incomplete and is never read as
an input. Stages use only this module for hashing, manifests and lineage; none
hand-rolls JSON or checksums.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import time
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from lmforge import __version__
from lmforge.errors import ArtifactError, ConfigError, LineageError

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


# ---------------------------------------------------------------- where a stage may write

_WRITE_ROOTS: list[tuple[Path, ...]] = []


@contextlib.contextmanager
def confined_writes(*roots: str | os.PathLike) -> Iterator[None]:
    """While a stage builds, every write through this module must land under one of `roots`:
    its output directory, plus what the stage declares it updates (eval: the model's card),
    plus the hash-cache sidecar `cached_file_fact` keeps beside checked inputs.
    A path that leaves them (a name from a config, a symlink inside the output, a bug) is
    refused before anything is written. The stage runner sets this for every stage."""
    _WRITE_ROOTS.append(tuple(Path(r).resolve() for r in roots))
    try:
        yield
    finally:
        _WRITE_ROOTS.pop()


def check_write_allowed(path: str | os.PathLike) -> None:
    """Refuse `path` when a stage's writes are confined (`confined_writes`) and it lies elsewhere."""
    if not _WRITE_ROOTS:
        return
    resolved = Path(path).resolve()
    if not any(resolved == root or root in resolved.parents for root in _WRITE_ROOTS[-1]):
        raise ArtifactError(f"refused to write {path}: it lies outside this stage's output directory "
                            f"{_WRITE_ROOTS[-1][0]} (resolved: {resolved}); nothing was written there")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` on success.

    For writers that want a filename (numpy, sentencepiece, gzip). On error the
    temporary file is removed and `path` is left as it was. Inside a stage, `path`
    must lie under the stage's output directory (`confined_writes`).
    """
    final = Path(path)
    check_write_allowed(final)
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
    """Create `path` (if needed), check it is writable, take its write lock, remove
    temporaries of killed writers, and drop a stale manifest.

    Removing the old manifest first means a run killed half-way leaves a directory
    that reads as incomplete rather than one whose manifest describes other files.
    """
    out = writable_dir(path)
    lock_output_dir(out)  # one writer at a time: a second process stops here with a clear error
    remove_stale_temps(out)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    return out


def writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` if needed and prove it writable, or stop with one clear error."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ArtifactError(f"output directory {out} is not writable: {exc.strerror or exc}") from None
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
        p = contained(root, item, f"{stage} output")
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
    manifest["identity"] = artifact_identity(manifest)
    atomic_write_json(root / MANIFEST_NAME, manifest)
    return manifest


def describe_input(path: str | os.PathLike) -> dict:
    """An input as recorded in a manifest: its path and its content identity. For an
    artifact directory, `artifact_identity` of its manifest (None without one, e.g. an
    external model); for a plain file, the sha256 of its bytes."""
    p = Path(path)
    identity = None
    if p.is_dir() and (p / MANIFEST_NAME).is_file():
        try:
            identity = artifact_identity(read_json(p / MANIFEST_NAME, "manifest"))
        except ArtifactError:
            identity = None  # unreadable: never equal to a recorded identity, so the stage reruns
    elif p.is_file():
        identity = sha256_file(p)
    return {"path": str(p), "identity": identity}


# What an identity covers: the data a stage made. Markdown files (cards, reports) are
# documentation that later stages rewrite (eval adds its scores to a model's card), so
# they never change what an artifact *is*.
_DOC_SUFFIXES = (".md",)


def artifact_identity(manifest: dict) -> str:
    """An artifact's content identity: its stage, config hash and the sha256 of every data
    output, never the manifest's own bytes (which hold a timestamp and the host name). An
    identical rebuild therefore has the same identity and invalidates nothing downstream."""
    outputs = sorted([e.get("path"), e.get("sha256")] for e in manifest.get("outputs", [])
                     if isinstance(e, dict) and not str(e.get("path", "")).endswith(_DOC_SUFFIXES))
    return sha256_json({"stage": manifest.get("stage"), "config_sha256": manifest.get("config_sha256"),
                        "outputs": outputs})


def load_manifest(
    artifact_dir: str | os.PathLike,
    stage: str | tuple[str, ...] | None = None,
    *,
    verify: str = "size",
) -> dict:
    """Load an artifact's manifest, refusing incomplete or corrupted artifacts.

    verify: "none", "size" (every listed file exists with its size: cheap),
    "cached" (sha256 on first use, then again only when a file's size, mtime or
    inode changes) or "sha256" (every file re-hashed).
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
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path} is not a JSON object: not an lmforge manifest")
    stages = (stage,) if isinstance(stage, str) else stage
    if stages and manifest.get("stage") not in stages:
        raise ArtifactError(
            f"{root} holds a '{manifest.get('stage')}' artifact, expected {' or '.join(stages)}"
        )
    if verify != "none":
        verify_outputs(root, manifest, full=(verify == "sha256"), cached=(verify == "cached"))
    return manifest


def verify_outputs(root: Path, manifest: dict, *, full: bool, cached: bool = False) -> None:
    """Check each output listed in the manifest; raise naming the first bad file.

    full: also compare sha256; cached: reuse a hash computed earlier for the same
    (size, mtime, inode), so a rerun does not rehash gigabytes (see `cached_sha256`).
    """
    for entry in manifest.get("outputs", []):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise ArtifactError(f"{root / MANIFEST_NAME} has a malformed outputs entry: {str(entry)[:80]}")
        p = contained(root, entry["path"], f"{root / MANIFEST_NAME} output")
        if not p.is_file():
            raise ArtifactError(f"{p} is listed in {root / MANIFEST_NAME} but missing")
        if p.stat().st_size != entry.get("bytes"):
            raise ArtifactError(f"{p} has {p.stat().st_size} bytes, manifest says {entry.get('bytes')}: corrupted or truncated")
        if full or cached:
            digest = cached_sha256(p) if cached else sha256_file(p)
            if digest != entry.get("sha256"):
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
    """True when `out_dir` holds a complete artifact made from this config and from inputs
    with these content identities (see `artifact_identity`)."""
    try:
        manifest = load_manifest(out_dir, stage)
    except ArtifactError:
        return False
    if manifest.get("config_sha256") != sha256_json(config):
        return False
    recorded = manifest.get("inputs", {})
    for role, path in (inputs or {}).items():
        if recorded.get(role, {}).get("identity") != describe_input(path)["identity"]:
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


# ---------------------------------------------------------------- names and paths

_BAD_NAME = re.compile(r"[/\\\x00]")


def safe_name(value: str, what: str) -> str:
    """`value` as one path component: no separators, not '.', '..' or empty, not absolute.

    For config values that become directory names (an architecture's `name`): a
    name like "../../victim" must never point a stage's writes (or --force deletes)
    outside its output directory.
    """

    if not isinstance(value, str) or not value.strip() or value in (".", "..") or _BAD_NAME.search(value) \
            or os.path.isabs(value) or value != value.strip():
        raise ConfigError(f"{what}: {value!r} is not a valid name (one folder name: no '/', '\\\\', "
                          "'..', leading/trailing spaces or absolute path)")
    return value


def contained(root: str | os.PathLike, relpath: str | os.PathLike, what: str = "path") -> Path:
    """`root / relpath`, refusing anything that resolves outside `root` (symlinks included)."""
    base = Path(root)
    candidate = Path(relpath)
    full = candidate if candidate.is_absolute() else base / candidate
    resolved_root = base.resolve()
    resolved = full.resolve()
    if resolved != resolved_root and resolved_root not in resolved.parents:
        raise ArtifactError(f"{what} {str(relpath)!r} points outside {base}: refused")
    return full


def child_dir(root: str | os.PathLike, name: str, what: str) -> Path:
    """A validated sub-directory name of `root` (see `safe_name`), checked to stay inside it."""
    return contained(root, safe_name(name, what), what)


# ---------------------------------------------------------------- cached content checks

CACHE_NAME = ".lmforge-sha256.json"


def _signature(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def cached_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, remembered beside it keyed by (size, mtime, inode).

    The cache only saves work: the caller still compares the digest with the
    manifest every time, so an edited manifest is caught; a changed file changes
    its signature and is rehashed. An unwritable directory just means no cache.
    """
    return cached_file_fact(path, "sha256", sha256_file)


def cached_file_fact(path: str | os.PathLike, key: str, compute) -> Any:
    """`compute(path)` (JSON data), remembered in the folder's cache until the file's
    (size, mtime, inode) changes. Used for content checks too costly to redo per run."""
    p = Path(path)
    cache_path = p.parent / CACHE_NAME
    try:
        cache = json.loads(cache_path.read_text(encoding="utf-8"))
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    signature = _signature(p)
    entry = cache.get(p.name)
    if not isinstance(entry, dict) or entry.get("signature") != signature:
        entry = {"signature": signature}
    if key in entry:
        return entry[key]
    value = compute(p)
    if _signature(p) == signature:  # unchanged while computing: safe to remember
        entry[key] = value
        cache[p.name] = entry
        # The one write a stage makes beside its inputs: this fixed-name sidecar, best effort.
        with confined_writes(cache_path.parent):
            try:
                atomic_write_json(cache_path, cache)
            except OSError:
                pass  # read-only input: no cache, still checked
    return value


# ---------------------------------------------------------------- one writer per directory

LOCK_NAME = ".lmforge.lock"
_HELD_LOCKS: dict[Path, int] = {}


def lock_output_dir(path: str | os.PathLike, lock_name: str = LOCK_NAME) -> None:
    """Take the advisory write lock of an artifact directory for the rest of this process.

    A second process asking for the same directory gets ArtifactError("X is being
    written by pid N"). The lock is an fcntl lock on `lock_name` (default `.lmforge.lock`;
    `lmforge run` uses its own name for its run directory, whose sub-folders are stages'
    outputs), so the kernel drops it when the holder exits, even on kill -9: never stale.
    """
    lock_path = Path(path).resolve() / lock_name
    if lock_path in _HELD_LOCKS:
        return
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)  # a filesystem without locks (some network mounts): write unlocked, as before
            return
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise ArtifactError(f"{path} is being written by pid {holder}: wait for it to finish "
                            "(or stop it) before writing there") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD_LOCKS[lock_path] = fd


def unlock_output_dir(path: str | os.PathLike, lock_name: str = LOCK_NAME) -> None:
    """Release a lock taken by `lock_output_dir` in this process (tests, long-lived callers)."""
    fd = _HELD_LOCKS.pop(Path(path).resolve() / lock_name, None)
    if fd is not None:
        os.close(fd)


_TEMP_NAME = re.compile(r"^\..+\.tmp-(\d+)$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete `.NAME.tmp-PID` files and folders left in `path` by processes that are gone.

    Those are the leftovers of `atomic_path` when a writer was killed (a packed
    .bin, a checkpoint being saved). Temps of live processes are left alone.
    """
    root = Path(path)
    removed = []
    if not root.is_dir():
        return removed
    for child in root.iterdir():
        match = _TEMP_NAME.match(child.name)
        if not match or int(match.group(1)) == os.getpid() or _pid_alive(int(match.group(1))):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
        removed.append(child)
    return removed


def release_all_locks() -> None:
    """Release every directory lock this process holds (end of a verb run in-process)."""
    for lock_path in list(_HELD_LOCKS):
        os.close(_HELD_LOCKS.pop(lock_path))
