"""One exception tree for the storage initializer.

The CLI maps these to exit codes (2 for a bad URI, 1 for everything else) and prints `str(err)`,
which always names the URI and the cause on one line.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base: a fetch failed for a reason worth one line to the operator."""

    exit_code = 1

    def __init__(self, uri: str, cause: str) -> None:
        super().__init__(f"{uri}: {cause}")
        self.uri = uri
        self.cause = cause


class BadUriError(StorageError):
    """The URI cannot be parsed or names an unsupported scheme (bad input, exit 2)."""

    exit_code = 2


class NotFoundError(StorageError):
    """The store answered 404 or the prefix holds no objects."""


class AccessDeniedError(StorageError):
    """The store answered 401/403: credentials are missing or lack permission."""


class DiskFullError(StorageError):
    """Not enough space on the cache or destination filesystem (ENOSPC)."""


class IntegrityError(StorageError):
    """A downloaded file does not match its size or checksum, or an archive is unsafe."""


class TransientError(StorageError):
    """A failure that a retry may cure: a cut connection, a timeout, a 5xx or 429."""
