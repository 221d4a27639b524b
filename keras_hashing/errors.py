"""Errors a user can cause. The CLI prints them on one line and exits with status 2."""


class HashingError(Exception):
    """Base class: something the user can fix; the message says what to do."""


class ConfigError(HashingError):
    """Unknown method, key or value; a bad YAML file."""


class DataError(HashingError):
    """A dataset that is missing, empty, unreadable or of the wrong shape."""


class CodeLengthError(HashingError):
    """Codes whose bit length does not match the index or the model."""


class IndexFileError(HashingError):
    """An index file that is missing, truncated, corrupt or of another format version."""


class RunDirError(HashingError):
    """A run directory that lacks what a command needs (model.keras, config.yaml, ...)."""


class OutputError(HashingError):
    """An output path that cannot be written, or that would replace what it must not."""
