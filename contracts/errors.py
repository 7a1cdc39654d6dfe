"""Domain errors of the model component.

Each carries what a person needs to act on it; the service maps them to HTTP statuses and
the CLI to exit codes, in one place each.
"""

from __future__ import annotations


class DigitloopError(Exception):
    """Base class of every error digitloop raises on purpose."""


class InvalidImageError(DigitloopError, ValueError):
    """The input is not an image we can read (wrong format, corrupt, wrong shape)."""


class EmptyDrawingError(DigitloopError, ValueError):
    """The drawing holds no ink, or too little to be a digit."""


class DatasetError(DigitloopError, ValueError):
    """A data file is missing keys, has the wrong shape or dtype, or labels out of range."""


class ChecksumError(DigitloopError):
    """A downloaded file does not match its published SHA-256 (corrupt or partial)."""


class DownloadError(DigitloopError):
    """A file could not be downloaded (no network, mirror down, HTTP error)."""


class ModelNotFoundError(DigitloopError, LookupError):
    """No registered model version matches the requested version or alias."""
