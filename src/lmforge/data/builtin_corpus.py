"""A built-in offline corpus: the documentation that ships with Python itself.

Every machine that runs lmforge has the standard library, and with it a few
million characters of real English technical prose written by people: module,
class and function docstrings, and the language reference topics behind `help()`
(`pydoc_data.topics`). Nothing is shipped in this repository and nothing is
downloaded.

Sources are read with `ast`, never imported, so no stdlib module's import side
effects run. Files are visited in sorted order, so the corpus is identical across
runs on the same Python version (the manifest records the version).

Corpora:
  python_docstrings   one document per stdlib module: its docstring, then each
                      documented class/function as "name\\n\\ndocstring" (~1.8M chars)
  python_help_topics  one document per `help()` topic of the language reference (~0.5M chars)
  python_stdlib       both of the above, docstrings first
"""

from __future__ import annotations

import ast
import os
import sysconfig
from pathlib import Path
from typing import Iterator

from lmforge.errors import ConfigError

# Test suites and vendored third-party code are not stdlib documentation.
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "ensurepip"}
_MIN_DOC_CHARS = 40


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_python_files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield Path(dirpath) / name


def _module_document(tree: ast.Module, module: str) -> str:
    """A module's docstring followed by its documented classes and functions, in source order."""
    parts = []
    doc = ast.get_docstring(tree)
    if doc:
        parts.append(f"{module}\n\n{doc}")
    for node, qualname in _documented_nodes(tree.body, module):
        doc = ast.get_docstring(node)
        if doc and len(doc) >= _MIN_DOC_CHARS:
            parts.append(f"{qualname}\n\n{doc}")
    return "\n\n".join(parts)


def _documented_nodes(body: list, prefix: str) -> Iterator[tuple[ast.AST, str]]:
    for node in body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.name.startswith("_") and not node.name.startswith("__"):
                continue  # private helpers: mostly terse notes
            qualname = f"{prefix}.{node.name}"
            yield node, qualname
            if isinstance(node, ast.ClassDef):
                yield from _documented_nodes(node.body, qualname)


def iter_docstrings(root: Path | None = None) -> Iterator[dict]:
    root = root or stdlib_dir()
    for path in _stdlib_python_files(root):
        rel = path.relative_to(root).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):
            continue  # e.g. lib2to3 test data written in Python 2: not documentation
        text = _module_document(tree, module)
        if len(text) >= _MIN_DOC_CHARS:
            yield {"id": f"docstrings:{module}", "text": text}


def iter_help_topics(root: Path | None = None) -> Iterator[dict]:
    path = (root or stdlib_dir()) / "pydoc_data" / "topics.py"
    if not path.is_file():
        return
    tree = ast.parse(path.read_bytes(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "topics" for t in node.targets):
            topics = ast.literal_eval(node.value)
            for name in sorted(topics):
                yield {"id": f"help:{name}", "text": topics[name]}


BUILTIN_CORPORA = {
    "python_docstrings": (iter_docstrings,),
    "python_help_topics": (iter_help_topics,),
    "python_stdlib": (iter_docstrings, iter_help_topics),
}


def stream_builtin(name: str) -> Iterator[dict]:
    """Records {"id", "text"} of a built-in corpus, in a fixed order."""
    if name not in BUILTIN_CORPORA:
        raise ConfigError(f"unknown built-in corpus {name!r} (available: {', '.join(BUILTIN_CORPORA)})")
    for generate in BUILTIN_CORPORA[name]:
        yield from generate()
