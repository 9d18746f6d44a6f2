"""hf://org/model[@revision] over the Hugging Face Hub HTTP API.

The revision (a branch, tag or commit) is resolved to a commit with
`GET {HF_ENDPOINT}/api/models/{repo}/revision/{rev}?blobs=true`, which also lists every file with its
size, git blob id and, for LFS files, the sha256. Files are read from
`{HF_ENDPOINT}/{repo}/resolve/{commit}/{path}` (the Hub redirects LFS files to its CDN; aiohttp drops
the Authorization header on a cross-host redirect). LFS files are checked against their sha256 and the
others against their git blob id, so every file has a checksum. HF_TOKEN (or HUGGING_FACE_HUB_TOKEN)
is sent as a bearer token.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from urllib.parse import quote

import aiohttp

from runtime.storage.config import TransferConfig
from runtime.storage.errors import AccessDeniedError, NotFoundError, StorageError, TransientError
from runtime.storage.sources.base import (
    Listing,
    RemoteFile,
    check_status,
    new_session,
    safe_relative_path,
    stream_get,
)
from runtime.storage.uri import StorageUri

_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class HfSource:
    scheme = "hf"

    def __init__(self, uri: StorageUri, config: TransferConfig | None = None) -> None:
        self.uri = uri
        self.repo = uri.bucket
        self.revision = uri.key
        self.endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session = new_session(config or TransferConfig())

    async def close(self) -> None:
        await self._session.close()

    async def listing(self) -> Listing:
        url = f"{self.endpoint}/api/models/{self.repo}/revision/{quote(self.revision, safe='')}?blobs=true"
        info = await self._get_json(url)
        commit = str(info.get("sha", ""))
        if not _HEX40.match(commit):
            raise StorageError(self.uri.raw, f"hub gave no commit sha for revision {self.revision!r}")
        siblings = info.get("siblings")
        if not isinstance(siblings, list) or not siblings:
            raise NotFoundError(self.uri.raw, f"no files at revision {self.revision!r}")
        files = await asyncio.gather(*(self._file(commit, s) for s in siblings if isinstance(s, dict)))
        files.sort(key=lambda f: f.path)
        return Listing(version=commit, files=tuple(files))

    async def _file(self, commit: str, sibling: dict[str, object]) -> RemoteFile:
        name = safe_relative_path(self.uri.raw, str(sibling.get("rfilename", "")))
        url = f"{self.endpoint}/{self.repo}/resolve/{commit}/{quote(name)}"
        lfs = sibling.get("lfs")
        sha256 = str(lfs.get("sha256", "")) if isinstance(lfs, dict) else ""
        blob = str(sibling.get("blobId", ""))
        size = sibling.get("size")
        if not isinstance(size, int):
            size, linked_etag = await self._head(url, name)
            sha256 = sha256 or linked_etag
        return RemoteFile(
            path=name,
            size_bytes=size,
            ref=url,
            etag=sha256 or blob,
            sha256=sha256 if _HEX64.match(sha256) else None,
            git_sha1=None if sha256 or not _HEX40.match(blob) else blob,
        )

    async def _head(self, url: str, name: str) -> tuple[int, str]:
        """Size and LFS sha256 from the resolve endpoint's X-Linked-* headers (no redirect followed)."""
        try:
            async with self._session.head(url, headers=self._headers, allow_redirects=False) as resp:
                if resp.status >= 400:
                    check_status(self.uri.raw, resp.status, resp.reason or "", name)
                size = resp.headers.get("X-Linked-Size") or resp.headers.get("Content-Length")
                etag = resp.headers.get("X-Linked-Etag", "").strip('"')
        except (aiohttp.ClientError, TimeoutError) as err:
            raise TransientError(self.uri.raw, f"{name}: {type(err).__name__}: {err}") from err
        if size is None:
            raise StorageError(self.uri.raw, f"{name}: hub sent no size")
        return int(size), etag if _HEX64.match(etag) else ""

    async def _get_json(self, url: str) -> dict[str, object]:
        try:
            async with self._session.get(url, headers=self._headers) as resp:
                body = await resp.read()
                if resp.status == 401 and not self._headers:
                    raise AccessDeniedError(
                        self.uri.raw, "repository is private, gated or missing (HTTP 401); set HF_TOKEN"
                    )
                check_status(self.uri.raw, resp.status, resp.reason or "", "model info")
        except (aiohttp.ClientError, TimeoutError) as err:
            raise TransientError(self.uri.raw, f"model info: {type(err).__name__}: {err}") from err
        try:
            data = json.loads(body)
        except ValueError as err:
            raise StorageError(self.uri.raw, "hub answered with something that is not JSON") from err
        if not isinstance(data, dict):
            raise StorageError(self.uri.raw, "hub answered with an unexpected JSON shape")
        return data

    def read(self, f: RemoteFile, start: int, end: int) -> AsyncIterator[bytes | memoryview]:
        return stream_get(self._session, self.uri.raw, f.ref, self._headers, f, start, end)

    def verified_digests(self, f: RemoteFile) -> RemoteFile:
        return f
