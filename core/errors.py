"""Typed exceptions of the product.

Every message says what failed (with the offending value) and, in ``hint``, how to fix it. The CLI
prints ``error: <message>`` and ``hint: <hint>``; pages show both with ``st.error``.
"""
from __future__ import annotations


class PosterGenreError(Exception):
    """Base class: an expected failure with a user-facing message and an optional fix."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class DatasetError(PosterGenreError):
    """A dataset folder or its labels.csv cannot be used."""


class ImageError(PosterGenreError):
    """One image cannot be decoded; callers report it by name and skip it."""


class WeightsError(PosterGenreError):
    """The requested VGG16 weights cannot be loaded."""


class CacheError(PosterGenreError):
    """A cache file is truncated, corrupt or does not match what it claims to hold."""


class CacheUnreadableError(CacheError):
    """A cache file exists but the system refused to read it (permissions, I/O error): not proof of damage,
    so it is reported and never removed."""


class CacheUnwritableError(PosterGenreError):
    """The cache (or an output folder) cannot be written: a file in its place, read-only, or a full disk.

    Not a ``CacheError``: callers catch those to rebuild an entry, which a failed write must never trigger.
    """


class RunError(PosterGenreError):
    """A saved training run is missing, incomplete or does not match the given features."""


class TrainingError(PosterGenreError):
    """A training configuration or its data cannot be used."""


class DownloadError(PosterGenreError):
    """A remote source failed in a way retries did not fix."""


class AuthError(DownloadError):
    """The remote source rejected the credentials."""


class RateLimitError(DownloadError):
    """The remote source kept answering 429 after the allowed retries."""


class UnsafePickleError(PosterGenreError):
    """A pickle holds something other than plain data and was refused unread."""


class ConfigError(PosterGenreError):
    """An option is outside the range where it means something (batch size 0, k above the genre count...)."""


class EngineError(PosterGenreError):
    """A distributed extraction engine is not installed, not reachable, or cannot run the job."""
