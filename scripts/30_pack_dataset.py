#!/usr/bin/env python
"""Plan step 4 (sequence packing): the same as `lmforge pack` (run with --help for options)."""
import sys
from pathlib import Path

# Run from a checkout without installing: the package lives in ../src.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lmforge.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["pack", *sys.argv[1:]]))
