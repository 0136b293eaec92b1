"""`<run_dir>/pipeline_run.json`: what each stage of a pipeline did, when, and how long it took.

Written by `lmforge run` after every stage (atomically), read by the dry run (last timings)
and by REPORT.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.artifacts import atomic_write_json

RUN_FILE = "pipeline_run.json"


def load_run_record(path: Path) -> dict:
    """The record, or {} when there is none yet (or it is unreadable: it is rebuilt)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def save_run_record(path: Path, record: dict) -> None:
    atomic_write_json(path, record)
