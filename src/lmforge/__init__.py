"""lmforge: raw text to an evaluated small chat model, one verifiable artifact at a time.

The Python API (`run_pipeline`, `load_model`, `reply`; see lmforge.api) is imported on
first use, so `import lmforge` stays cheap (no torch, no transformers).
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_model", "reply", "run_pipeline"]
_API = {"load_model", "reply", "run_pipeline"}


def __getattr__(name: str):
    if name in _API:
        from lmforge import api

        return getattr(api, name)
    raise AttributeError(f"module 'lmforge' has no attribute {name!r}")
