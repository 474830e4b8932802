"""Typed errors with one-line, user-facing messages; the CLI maps them to exit codes."""

from __future__ import annotations


class BmsearchError(Exception):
    """Base of every error the library raises on purpose; its message is shown to the user as is."""

    exit_code = 1


class UsageError(BmsearchError):
    """Options that contradict each other or name nothing usable."""

    exit_code = 2


class CorpusError(BmsearchError):
    """The input corpus is missing, unreadable, not Parquet, or has bad columns or rows."""


class ModelError(BmsearchError):
    """A model cannot be loaded, or does not match the index it is used with."""


class IndexNotFoundError(BmsearchError):
    """No index (or no complete generation) under the given name."""


class OutputExistsError(BmsearchError):
    """An output (index, model folder, evaluation set) exists and --overwrite was not given."""


class IndexExistsError(OutputExistsError):
    """An index of that name exists and --overwrite was not given."""


class IndexCorruptError(BmsearchError):
    """An index file or manifest is missing, truncated or inconsistent."""


class LockedError(BmsearchError):
    """Another live writer holds the index lock."""


class FilterError(BmsearchError):
    """A --where condition or structured filter is not valid: always one the user wrote, so a usage error."""

    exit_code = 2


class IndexBuildError(BmsearchError):
    """An index cannot be built as asked (bad factory string, memory budget too small, ...)."""


class DataError(BmsearchError):
    """Training or evaluation data is missing, malformed or too small."""


class EncoderError(BmsearchError):
    """Encoding failed at run time for a reason outside the input (a tokenizer worker process died)."""
