"""Check tokenizer lineage across run directories (the plan's "Validation Finale").

    lmforge verify data checkpoints evaluation_results
    lmforge verify runs/quickstart

Finds every artifact (a directory with a manifest.json) under the given paths, prints
one row per artifact with the tokenizer_sha256 it records, and exits 1 when an output
file fails its size or sha256 against its manifest (CORRUPT), when any
differs from the tokenizer's, when a tokenizer-dependent artifact records none (a
missing link), when a tokenizer's tokenizer_config.json `sha256_hash` does not match
its spm.model, or when a model directory carries tokenizer files other than the ones
it was trained with. The reference is the one tokenizer artifact found, or --tokenizer.

The fields read are the ones the plan's own checks read with jq:
`jq -r '.sha256_hash' tokenizer_config.json` and `jq -r '.tokenizer_sha256' manifest.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from lmforge.artifacts import atomic_write_json, describe_input, sha256_file, verify_outputs
from lmforge.errors import ArtifactError

MANIFEST = "manifest.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPM_MODEL = "spm.model"
# Stages that come before any tokenizer exists; every other stage must record one.
NO_TOKENIZER_STAGES = {"corpus", "quickstart-data"}
SKIP_DIRS = {".git", "__pycache__", "node_modules", ".venv", "venv", "cache", "logs"}


@dataclasses.dataclass
class Row:
    path: Path
    stage: str
    sha256: str | None
    status: str            # "reference", "ok", "n/a", "MISMATCH", "MISSING"
    note: str = ""


@dataclasses.dataclass
class Result:
    reference: str | None
    reference_from: str | None
    rows: list[Row]
    problems: list[str]
    warnings: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def find_artifacts(paths: list[Path]) -> list[tuple[Path, dict]]:
    """Every directory under `paths` holding a readable manifest.json, in path order."""
    found: dict[Path, dict] = {}
    for root in paths:
        if not root.exists():
            raise ArtifactError(f"{root} does not exist")
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
            if MANIFEST in filenames:
                manifest = _read_json(Path(dirpath) / MANIFEST)
                if manifest is not None and "stage" in manifest:
                    found[Path(dirpath)] = manifest
    return sorted(found.items(), key=lambda kv: str(kv[0]))


def tokenizer_dir_hash(directory: Path) -> tuple[str | None, list[str]]:
    """The `sha256_hash` of a tokenizer directory's config, checked against its spm.model bytes."""

    config = _read_json(directory / TOKENIZER_CONFIG) or {}
    declared = config.get("sha256_hash")
    problems = []
    if not declared:
        problems.append(f"{directory / TOKENIZER_CONFIG} has no sha256_hash")
    model = directory / SPM_MODEL
    if model.is_file():
        actual = sha256_file(model)
        if declared and actual != declared:
            problems.append(f"{model} hashes to {actual[:16]}…, but {TOKENIZER_CONFIG} says {declared[:16]}…")
    elif declared:
        problems.append(f"{directory} has {TOKENIZER_CONFIG} but no {SPM_MODEL}")
    return declared, problems


def _reference(artifacts: list[tuple[Path, dict]], tokenizer: Path | None) -> tuple[str | None, str | None, list[str]]:
    if tokenizer is not None:
        sha, problems = tokenizer_dir_hash(tokenizer)
        return sha, str(tokenizer), problems
    tokenizers = [(p, m.get("tokenizer_sha256")) for p, m in artifacts if m.get("stage") == "tokenizer"]
    hashes = {sha for _, sha in tokenizers if sha}
    externals = {r["sha256"]: r for r in map(external_tokenizer, (m for _, m in artifacts)) if r}
    if not tokenizers and len(externals) == 1:  # a run started from a Hugging Face model (lmforge.model.external)
        record = next(iter(externals.values()))
        return record["sha256"], f"external tokenizer {record['path']}", []
    if not tokenizers:
        if all(m.get("stage") in NO_TOKENIZER_STAGES for _, m in artifacts):
            return None, None, []           # nothing made with a tokenizer yet: nothing to check
        return None, None, ["no tokenizer artifact found (pass --tokenizer DIR to name the reference)"]
    if len(hashes) > 1:
        listing = "; ".join(f"{p}: {(sha or 'none')[:16]}…" for p, sha in tokenizers)
        return None, None, [f"several different tokenizers found, lineage is ambiguous: {listing}"]
    return next(iter(hashes), None), str(tokenizers[0][0]), []


def external_tokenizer(manifest: dict) -> dict | None:
    """The external (non-lmforge) tokenizer an artifact records, if any (lmforge.model.external)."""
    record = manifest.get("external_tokenizer") or (manifest.get("figures") or {}).get("external_tokenizer")
    return record if isinstance(record, dict) and record.get("sha256") else None


def check_artifact(path: Path, manifest: dict, reference: str | None) -> tuple[Row, list[str]]:
    """One artifact's row and its problems."""
    stage = str(manifest.get("stage"))
    sha = manifest.get("tokenizer_sha256")
    problems: list[str] = []
    if stage == "tokenizer":
        declared, own = tokenizer_dir_hash(path)
        problems += own
        if declared and sha and declared != sha:
            problems.append(f"{path}: {TOKENIZER_CONFIG} sha256_hash {declared[:16]}… differs from its "
                            f"manifest's tokenizer_sha256 {sha[:16]}…")
    elif sha:
        problems += _copied_tokenizer_problems(path, sha)
    results = _read_json(path / "results.json") or {}
    if results.get("tokenizer_sha256") and sha and results["tokenizer_sha256"] != sha:
        problems.append(f"{path}/results.json records tokenizer {results['tokenizer_sha256'][:16]}…, "
                        f"its manifest {sha[:16]}…")
    if not sha:
        if stage in NO_TOKENIZER_STAGES:
            return Row(path, stage, None, "n/a", "made before any tokenizer"), problems
        problems.append(f"{path} ({stage}) records no tokenizer_sha256: missing link in the lineage")
        return Row(path, stage, None, "MISSING"), problems
    if reference and sha != reference:
        problems.append(f"{path} ({stage}) was made with tokenizer {sha[:16]}…, the reference is {reference[:16]}…")
        return Row(path, stage, sha, "MISMATCH"), problems
    status = "reference" if stage == "tokenizer" else ("ok" if reference else "?")
    external = external_tokenizer(manifest)
    if external and not problems:
        return Row(path, stage, sha, "external", f"external tokenizer {external['path']}"), problems
    return Row(path, stage, sha, "MISMATCH" if problems else status), problems


def _copied_tokenizer_problems(path: Path, sha: str) -> list[str]:
    """A model directory's copied tokenizer files must be the ones its manifest names."""

    problems = []
    declared = (_read_json(path / TOKENIZER_CONFIG) or {}).get("sha256_hash")
    if declared and declared != sha:
        problems.append(f"{path}/{TOKENIZER_CONFIG} sha256_hash {declared[:16]}… differs from its manifest's "
                        f"tokenizer_sha256 {sha[:16]}…")
    model = path / SPM_MODEL
    if model.is_file() and sha256_file(model) != sha:
        problems.append(f"{model} is not the tokenizer its manifest names ({sha[:16]}…)")
    return problems


def _stale_inputs(path: Path, manifest: dict) -> list[str]:
    """Inputs whose content changed since this artifact was built (an upstream stage rebuilt
    with other data or config; an identical rebuild keeps its identity and is no note)."""
    notes = []
    for role, entry in (manifest.get("inputs") or {}).items():
        if not isinstance(entry, dict) or not entry.get("identity") or not entry.get("path"):
            continue
        current = describe_input(entry["path"])["identity"]
        if current is not None and current != entry["identity"]:
            notes.append(f"{path}: its {role} input {entry['path']} was rebuilt since with other content")
    return notes


def output_problems(path: Path, manifest: dict) -> list[str]:
    """Every output's size and sha256 against the manifest (hashes cached by size/mtime/inode)."""

    try:
        verify_outputs(path, manifest, full=False, cached=True)
    except ArtifactError as exc:
        return [str(exc)]
    return []


def verify_paths(paths: list[str | Path], tokenizer: str | Path | None = None) -> Result:
    """Check every artifact under `paths` against the reference tokenizer."""
    artifacts = find_artifacts([Path(p) for p in paths])
    if not artifacts:
        return Result(None, None, [], [f"no lmforge artifacts (manifest.json) under {', '.join(map(str, paths))}"], [])
    reference, ref_from, problems = _reference(artifacts, Path(tokenizer) if tokenizer else None)
    rows, warnings = [], []
    for path, manifest in artifacts:
        row, own = check_artifact(path, manifest, reference)
        damaged = output_problems(path, manifest)
        if damaged:
            row.status, own = "CORRUPT", damaged + own
        rows.append(row)
        problems += own
        warnings += _stale_inputs(path, manifest)
    return Result(reference, ref_from, rows, problems, warnings)


def format_table(result: Result, full: bool = False) -> str:
    """The plan's "TOKENIZER SHA256 VALIDATION" as a table."""
    def short(sha: str | None) -> str:
        return "-" if not sha else (sha if full else sha[:16] + "…")

    mark = {"reference": "✓ source", "ok": "✓", "external": "✓ external", "n/a": "n/a", "MISMATCH": "✗ MISMATCH", "MISSING": "✗ MISSING", "CORRUPT": "✗ CORRUPT",
            "?": "? no reference"}
    lines = ["=== TOKENIZER SHA256 VALIDATION ===", f"reference: {result.reference or '(none)'}"
             + (f"  (from {result.reference_from})" if result.reference_from else "")]
    header = ("artifact", "stage", "tokenizer_sha256", "check")
    body = [(str(r.path), r.stage, short(r.sha256), mark.get(r.status, r.status)) for r in result.rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body]
    lines += [f"warning: {w}" for w in result.warnings]
    if result.ok and result.reference is None:
        lines.append(f"✅ none of the {len(result.rows)} artifacts depends on a tokenizer yet")
    elif result.ok:
        lines.append(f"✅ all {len(result.rows)} artifacts agree on one tokenizer")
    else:
        lines += [f"✗ {p}" for p in result.problems]
        lines.append(f"⚠️ lineage check FAILED: {len(result.problems)} problem(s)")
    return "\n".join(lines)


def markdown_table(result: Result) -> str:
    """The same table for REPORT.md."""
    lines = ["| artifact | stage | tokenizer_sha256 | check |", "|---|---|---|---|"]
    for r in result.rows:
        lines.append(f"| `{r.path}` | {r.stage} | `{(r.sha256 or '-')[:16]}` | {r.status} |")
    verdict = "all artifacts agree" if result.ok else "FAILED: " + "; ".join(result.problems)
    return "\n".join(lines) + f"\n\nReference tokenizer: `{result.reference or 'none'}`. Verdict: {verdict}."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="RUN_DIR", help="directories to search for artifacts")
    parser.add_argument("--tokenizer", metavar="DIR", help="reference tokenizer dir (default: the one found)")
    parser.add_argument("--full", action="store_true", help="print full 64-character hashes")
    parser.add_argument("--json", metavar="FILE", help="also write the result as JSON")


def main(args: argparse.Namespace) -> int:
    result = verify_paths(args.paths, args.tokenizer)
    print(format_table(result, full=args.full))
    if args.json:

        atomic_write_json(args.json, {
            "ok": result.ok, "reference": result.reference, "reference_from": result.reference_from,
            "problems": result.problems, "warnings": result.warnings,
            "artifacts": [{"path": str(r.path), "stage": r.stage, "tokenizer_sha256": r.sha256, "status": r.status}
                          for r in result.rows]})
    return 0 if result.ok else 1
