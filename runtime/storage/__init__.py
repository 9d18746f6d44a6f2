"""zeroserve storage initializer: fetch model artifacts fast, cache them per node, prefetch them.

API for the local backend and the model server (all names re-exported here):

    NodeCache.default() -> NodeCache
        The node cache: root from ZEROSERVE_CACHE_DIR (default ~/.cache/zeroserve), size budget from
        ZEROSERVE_CACHE_BYTES (bytes or 50G / 512M; default 100 GiB), and ZEROSERVE_CACHE_FRESH_S
        (default 0: every use first asks the store whether the model changed; N: an entry validated
        less than N s ago is used without asking). Shared safely by every process on the machine
        (fcntl.flock per entry). Methods: entries(), remove(key), prune(budget).

    async def prefetch(uri: str, cache: NodeCache) -> Path
        Ensure the cache holds the current version of `uri` (downloading it at most once per node even
        when called concurrently from many processes); returns the entry directory, whose files are
        under `<entry>/data/`. Call it while a model is at zero so its next cold start is a cache hit.
        file:// and pvc:// are read in place and never cached: their path is returned unchanged.

    async def materialize(uri: str, dest: Path, cache: NodeCache | None) -> FetchResult
        Deliver the model into `dest`: with a cache, prefetch then hard-link every file (symlinks to the
        read-only cache copy when `dest` is on another filesystem); without one, download straight into
        `dest`. FetchResult(uri, dest, cache_hit: bool, bytes: int, files: int, seconds: float);
        `.summary()` is the one-line log form. file:// and pvc:// are hard-linked (same filesystem),
        else copied (file://) or symlinked (pvc://).

    Both take an optional `config: TransferConfig` (concurrency, part size, retries, timeouts).

    Errors: StorageError and its subclasses (BadUriError, NotFoundError, AccessDeniedError,
    DiskFullError, IntegrityError, TransientError); str(err) is one line "<uri>: <cause>",
    err.exit_code is 2 for a bad URI and 1 otherwise.

URIs: file:// pvc:// http(s):// s3:// gs:// az:// (or https://<account>.blob.core.windows.net/...)
hf://org/model[@revision]. CLI (runtime.storage.cli): `zeroserve storage-init SRC_URI DEST_DIR`,
`zeroserve cache ls|rm|prune|prefetch`. Design and measurements: docs/storage.md.
"""

from __future__ import annotations

from runtime.storage.cache import CacheEntry, NodeCache
from runtime.storage.config import TransferConfig
from runtime.storage.errors import (
    AccessDeniedError,
    BadUriError,
    DiskFullError,
    IntegrityError,
    NotFoundError,
    StorageError,
    TransientError,
)
from runtime.storage.fetch import FetchResult, materialize, prefetch

__all__ = [
    "AccessDeniedError",
    "BadUriError",
    "CacheEntry",
    "DiskFullError",
    "FetchResult",
    "IntegrityError",
    "NodeCache",
    "NotFoundError",
    "StorageError",
    "TransferConfig",
    "TransientError",
    "materialize",
    "prefetch",
]
