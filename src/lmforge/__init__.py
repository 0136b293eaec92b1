"""lmforge: raw text to an evaluated small chat model, one verifiable artifact at a time."""

__version__ = "0.1.0"
