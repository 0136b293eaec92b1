"""Error types for mistakes a user can fix.

Anything raised as an `LmforgeError` is reported by the CLI as one clear message and
a non-zero exit, without a traceback. Bugs stay ordinary exceptions so they keep
their traceback.
"""


class LmforgeError(Exception):
    """A user-facing error: bad config, missing input, lineage mismatch..."""

    exit_code = 2


class ConfigError(LmforgeError):
    """A config file or flag is invalid. The message lists every problem found."""


class ArtifactError(LmforgeError):
    """An input artifact is missing, incomplete or fails its checksum."""


class LineageError(LmforgeError):
    """Two artifacts disagree on the tokenizer they were made with."""


class DataError(LmforgeError):
    """A data source cannot be read or yields nothing usable."""
