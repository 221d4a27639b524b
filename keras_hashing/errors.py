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


class ServingError(HashingError):
    """An error answered by (or on the way to) TF Serving; ``status`` is the HTTP code."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class ModelNotFoundError(ServingError):
    """404: no such model or version is loaded."""


class BadRequestError(ServingError):
    """400: the request does not fit the signature (shape, dtype, names)."""


class ServingUnavailableError(ServingError):
    """5xx or connection refused, still after every retry."""


class ServingTimeoutError(ServingError):
    """No complete answer within the timeout."""


class MalformedResponseError(ServingError):
    """The server answered something that is not TF Serving's JSON."""
