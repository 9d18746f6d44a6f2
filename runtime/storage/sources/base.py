"""What every scheme provides, and the aiohttp plumbing shared by the HTTP-based ones."""

from __future__ import annotations

import os
import posixpath
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from runtime.storage.config import TransferConfig
from runtime.storage.errors import (
    AccessDeniedError,
    IntegrityError,
    NotFoundError,
    StorageError,
    TransientError,
)
from runtime.storage.sources.fasthttp import FastPathUnsupported, open_get

# Big enough that per-chunk Python overhead vanishes next to the copy, small enough to bound memory.
READ_CHUNK_BYTES = 1 << 20
# Plain-http requests at least this large take the lean path (sources/fasthttp.py);
# ZEROSERVE_HTTP_FASTPATH=0 sends everything through aiohttp.
FAST_MIN_BYTES = 1 << 20
FAST_PATH = os.environ.get("ZEROSERVE_HTTP_FASTPATH", "1") != "0"


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """One object to fetch. `path` is relative to the destination; checksums are hex digests."""

    path: str
    size_bytes: int
    ref: str  # URL or object key, whatever the source needs to read it
    etag: str = ""
    md5: str | None = None
    sha256: str | None = None
    git_sha1: str | None = None  # git blob id, for small files in a git repo (HF non-LFS files)
    accepts_ranges: bool = True


@dataclass(frozen=True, slots=True)
class Listing:
    """The files under a URI and a version string that changes when any of them changes."""

    version: str
    files: tuple[RemoteFile, ...]
    single_object: bool = False  # the URI named one object (an archive may be unpacked)

    @property
    def total_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files)


class Source(Protocol):
    """A URI scheme. `read` yields the bytes [start, end) of a file, raising StorageError subclasses."""

    scheme: str

    async def listing(self) -> Listing: ...

    def read(self, f: RemoteFile, start: int, end: int) -> AsyncIterator[bytes | memoryview]: ...

    async def close(self) -> None: ...

    def verified_digests(self, f: RemoteFile) -> RemoteFile:
        """`f` with only the checksums that still hold after the download (headers may void one)."""
        ...


def safe_relative_path(uri: str, name: str) -> str:
    """Reject object names that would land outside the destination (`../x`, `/etc/x`)."""
    clean = posixpath.normpath(name.replace("\\", "/")).lstrip("/")
    if clean in ("", ".") or clean.startswith("../") or clean == ".." or "\x00" in clean:
        raise IntegrityError(uri, f"unsafe object name {name!r}")
    return clean


def check_status(uri: str, status: int, reason: str, what: str) -> None:
    """Map an HTTP status to the exception tree; return quietly for 2xx."""
    if 200 <= status < 300:
        return
    detail = f"{what}: HTTP {status} {reason}".strip()
    if status == 404:
        raise NotFoundError(uri, f"not found ({detail})")
    if status in (401, 403):
        raise AccessDeniedError(uri, f"access denied ({detail}); check credentials")
    if status in (408, 429) or status >= 500:
        raise TransientError(uri, detail)
    raise StorageError(uri, detail)


def new_session(config: TransferConfig) -> aiohttp.ClientSession:
    """One session per fetch; per-request timeouts instead of a total one (files can be huge)."""
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=config.connect_timeout_s, sock_read=config.read_timeout_s
    )
    n = config.concurrency
    connector = aiohttp.TCPConnector(limit=n * 2, limit_per_host=n, ttl_dns_cache=300)
    # identity: the bytes on disk must be the object's bytes, which sizes and checksums describe.
    return aiohttp.ClientSession(
        timeout=timeout,
        connector=connector,
        auto_decompress=False,
        headers={"Accept-Encoding": "identity", "User-Agent": "zeroserve-storage-init"},
    )


def _check_response(
    uri: str,
    f: RemoteFile,
    whole: bool,
    start: int,
    end: int,
    status: int,
    reason: str,
    headers: CIMultiDictProxy[str],
    content_length: int | None,
    on_headers: Callable[[CIMultiDictProxy[str]], None] | None,
) -> None:
    check_status(uri, status, reason, f.path)
    if not whole and status != 206:
        raise StorageError(uri, f"{f.path}: server ignored the Range header (HTTP {status})")
    if on_headers is not None:
        on_headers(headers)
    if content_length is not None and content_length != end - start:
        raise IntegrityError(uri, f"{f.path}: expected {end - start} bytes, server sent {content_length}")


async def stream_get(
    session: aiohttp.ClientSession,
    uri: str,
    url: str | URL,
    headers: Mapping[str, str],
    f: RemoteFile,
    start: int,
    end: int,
    on_headers: Callable[[CIMultiDictProxy[str]], None] | None = None,
) -> AsyncIterator[bytes | memoryview]:
    """GET [start, end) of `f` at `url`, checking that the server honoured the range. Yields buffers
    that are only valid until the next one is requested (the caller writes each one at once)."""
    whole = start == 0 and end == f.size_bytes
    hdrs = dict(headers)
    if not whole:
        hdrs["Range"] = f"bytes={start}-{end - 1}"
    target = url if isinstance(url, URL) else URL(url)
    read_timeout_s = session.timeout.sock_read or 60.0
    if FAST_PATH and target.scheme == "http" and end - start >= FAST_MIN_BYTES:
        try:
            resp = await open_get(target, hdrs, read_timeout_s)
        except FastPathUnsupported:
            pass  # the full client below handles it
        except (OSError, TimeoutError) as err:
            raise TransientError(uri, f"{f.path}: {type(err).__name__}: {err}") from err
        else:
            try:
                _check_response(
                    uri,
                    f,
                    whole,
                    start,
                    end,
                    resp.status,
                    resp.reason,
                    resp.headers,
                    resp.content_length,
                    on_headers,
                )
                async for view in resp.chunks(read_timeout_s):
                    yield view
            except (OSError, TimeoutError) as err:
                raise TransientError(uri, f"{f.path}: {type(err).__name__}: {err}") from err
            finally:
                resp.close()
            return
    try:
        async with session.get(target, headers=hdrs) as r:
            _check_response(
                uri, f, whole, start, end, r.status, r.reason or "", r.headers, r.content_length, on_headers
            )
            async for chunk in r.content.iter_chunked(READ_CHUNK_BYTES):
                yield chunk
    except (aiohttp.ClientError, TimeoutError) as err:
        raise TransientError(uri, f"{f.path}: {type(err).__name__}: {err}") from err
