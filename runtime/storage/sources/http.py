"""http(s):// — one file, or a directory when the URL ends in "/" and the server lists it as JSON.

Directory listings use nginx's `autoindex_format json` shape ([{"name", "type", "size", "mtime"}]),
which is what a plain nginx (or any static server emulating it) gives for a model directory.
Checksums come from RFC 9530 `Repr-Digest`, legacy `Digest`, `Content-MD5` or `x-goog-hash` when the
server sends them; otherwise only the size is verified.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from urllib.parse import quote, unquote, urljoin, urlsplit

import aiohttp
from multidict import CIMultiDictProxy

from runtime.storage.config import TransferConfig
from runtime.storage.errors import StorageError, TransientError
from runtime.storage.sources.base import (
    Listing,
    RemoteFile,
    check_status,
    new_session,
    safe_relative_path,
    stream_get,
)
from runtime.storage.uri import StorageUri

log = logging.getLogger(__name__)
MAX_LISTED_FILES = 100_000


def parse_digests(headers: CIMultiDictProxy[str]) -> tuple[str | None, str | None]:
    """(sha256 hex, md5 hex) from whichever digest headers the server sent."""
    sha256: str | None = None
    md5: str | None = None
    for name in ("Repr-Digest", "Digest", "x-goog-hash"):
        for item in headers.getall(name, []):
            for part in item.split(","):
                algo, _, value = part.strip().partition("=")
                value = value.strip().strip(":")
                try:
                    digest = base64.b64decode(value, validate=True).hex()
                except ValueError:
                    continue
                if algo.lower() == "sha-256" and len(digest) == 64:
                    sha256 = digest
                elif algo.lower() == "md5" and len(digest) == 32:
                    md5 = digest
    if md5 is None and "Content-MD5" in headers:
        try:
            md5 = base64.b64decode(headers["Content-MD5"], validate=True).hex()
        except ValueError:
            pass
    return sha256, md5


class HttpSource:
    scheme = "http"

    def __init__(self, uri: StorageUri, config: TransferConfig | None = None) -> None:
        self.uri = uri
        self.scheme = uri.scheme
        self._session = new_session(config or TransferConfig())

    async def close(self) -> None:
        await self._session.close()

    async def listing(self) -> Listing:
        if urlsplit(self.uri.raw).path.endswith("/"):
            return await self._list_directory()
        return await self._head_file()

    def read(self, f: RemoteFile, start: int, end: int) -> AsyncIterator[bytes | memoryview]:
        return stream_get(self._session, self.uri.raw, f.ref, {}, f, start, end)

    def verified_digests(self, f: RemoteFile) -> RemoteFile:
        return f

    async def _head_file(self) -> Listing:
        url = self.uri.raw
        try:
            async with self._session.head(url, allow_redirects=True) as resp:
                status, reason = resp.status, resp.reason or ""
                size = resp.content_length
                headers = resp.headers
                final_url = str(resp.url)
            if status in (403, 405, 501):
                # Pre-signed URLs are signed for GET only, and some servers refuse HEAD: ask for
                # one byte instead and read the size from Content-Range.
                async with self._session.get(url, headers={"Range": "bytes=0-0"}) as resp:
                    status, reason = resp.status, resp.reason or ""
                    headers = resp.headers
                    final_url = str(resp.url)
                    total = headers.get("Content-Range", "").rpartition("/")[2]
                    size = int(total) if total.isdigit() else resp.content_length if status == 200 else None
            check_status(url, status, reason, "HEAD")
        except (aiohttp.ClientError, TimeoutError) as err:
            raise TransientError(url, f"HEAD: {type(err).__name__}: {err}") from err
        if size is None:
            raise StorageError(url, "server did not send Content-Length; cannot verify the download")
        sha256, md5 = parse_digests(headers)
        etag = headers.get("ETag", "")
        name = safe_relative_path(url, unquote(urlsplit(final_url).path.rsplit("/", 1)[-1]) or "index")
        f = RemoteFile(
            path=name,
            size_bytes=size,
            ref=final_url,
            etag=etag,
            sha256=sha256,
            md5=md5,
            accepts_ranges=headers.get("Accept-Ranges", "").lower() == "bytes",
        )
        version = etag or f"{headers.get('Last-Modified', '')}|{size}"
        return Listing(version=version, files=(f,), single_object=True)

    async def _list_directory(self) -> Listing:
        files: list[RemoteFile] = []
        level = [("", self.uri.raw)]
        while level:
            # One level of the tree at a time, its folders listed concurrently.
            indexes = await asyncio.gather(*(self._get_index(url) for _, url in level))
            pending, level = list(zip(level, indexes, strict=True)), []
            for (rel_dir, url), index in pending:
                self._add_entries(rel_dir, url, index, files, level)
        files.sort(key=lambda f: f.path)
        if not files:
            raise StorageError(self.uri.raw, "directory listing is empty")
        fingerprint = hashlib.sha256(
            "\n".join(f"{f.path}|{f.size_bytes}|{f.etag}" for f in files).encode()
        ).hexdigest()
        return Listing(version=fingerprint[:32], files=tuple(files))

    def _add_entries(
        self,
        rel_dir: str,
        url: str,
        index: list[dict[str, object]],
        files: list[RemoteFile],
        subdirs: list[tuple[str, str]],
    ) -> None:
        for entry in index:
            name = str(entry.get("name", ""))
            if not name or "/" in name or name in (".", ".."):
                raise StorageError(self.uri.raw, f"bad name {name!r} in the listing of {url}")
            child = urljoin(url, quote(name))
            if entry.get("type") == "directory":
                subdirs.append((f"{rel_dir}{name}/", child + "/"))
            elif entry.get("type") == "file":
                path = safe_relative_path(self.uri.raw, rel_dir + name)
                size = int(str(entry.get("size", -1)))
                if size < 0:
                    raise StorageError(self.uri.raw, f"{path}: listing has no size")
                files.append(RemoteFile(path, size, child, etag=str(entry.get("mtime", ""))))
            if len(files) > MAX_LISTED_FILES:
                raise StorageError(self.uri.raw, f"more than {MAX_LISTED_FILES} files under the URL")

    async def _get_index(self, url: str) -> list[dict[str, object]]:
        try:
            async with self._session.get(url, headers={"Accept": "application/json"}) as resp:
                check_status(self.uri.raw, resp.status, resp.reason or "", f"listing {url}")
                body = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as err:
            raise TransientError(self.uri.raw, f"listing: {type(err).__name__}: {err}") from err
        try:
            entries = json.loads(body)
        except ValueError as err:
            raise StorageError(
                self.uri.raw, "a URL ending in '/' must return a JSON listing (nginx autoindex_format json)"
            ) from err
        if not isinstance(entries, list):
            raise StorageError(self.uri.raw, f"listing of {url} is not a JSON array")
        return [e for e in entries if isinstance(e, dict)]
