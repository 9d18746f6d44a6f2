"""s3:// on aiohttp with our own SigV4 signing: any S3-compatible store (AWS, MinIO, Ceph, moto).

Configuration, from the usual environment variables:
  endpoint     AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, or KServe's S3_ENDPOINT (+ S3_USE_HTTPS=0 for http)
  region       AWS_REGION, AWS_DEFAULT_REGION (default us-east-1)
  credentials  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN (none: unsigned requests)
  addressing   path-style for a custom endpoint, virtual-hosted for AWS; AWS_S3_ADDRESSING_STYLE overrides
Other credential chains (IRSA web identity, instance metadata) need ZEROSERVE_S3_CLIENT=obstore.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from runtime.storage.config import TransferConfig
from runtime.storage.errors import NotFoundError, TransientError
from runtime.storage.sources.base import (
    Listing,
    RemoteFile,
    Source,
    check_status,
    new_session,
    safe_relative_path,
    stream_get,
)
from runtime.storage.sources.sigv4 import Credentials, canonical_query, sign_get, uri_encode
from runtime.storage.uri import StorageUri

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
# Objects encrypted with KMS or customer keys have an ETag that is not the MD5 of the bytes.
_ETAG_NOT_MD5_SSE = ("aws:kms", "aws:kms:dsse")


@dataclass(frozen=True, slots=True)
class S3Config:
    endpoint: str  # scheme://host[:port], no trailing slash
    region: str
    path_style: bool
    credentials: Credentials | None

    @staticmethod
    def from_env(env: dict[str, str] | None = None) -> S3Config:
        e = dict(os.environ) if env is None else env
        region = e.get("AWS_REGION") or e.get("AWS_DEFAULT_REGION") or "us-east-1"
        endpoint = e.get("AWS_ENDPOINT_URL_S3") or e.get("AWS_ENDPOINT_URL") or ""
        if not endpoint and e.get("S3_ENDPOINT"):
            host = e["S3_ENDPOINT"]
            use_https = e.get("S3_USE_HTTPS", "1") not in ("0", "false", "False")
            endpoint = host if "://" in host else f"{'https' if use_https else 'http'}://{host}"
        custom = bool(endpoint)
        if not endpoint:
            endpoint = f"https://s3.{region}.amazonaws.com"
        style = e.get("AWS_S3_ADDRESSING_STYLE", "path" if custom else "virtual")
        creds = None
        if e.get("AWS_ACCESS_KEY_ID") and e.get("AWS_SECRET_ACCESS_KEY"):
            key_id, secret = e["AWS_ACCESS_KEY_ID"], e["AWS_SECRET_ACCESS_KEY"]
            creds = Credentials(key_id, secret, e.get("AWS_SESSION_TOKEN"))
        return S3Config(endpoint.rstrip("/"), region, style == "path", creds)


def make_s3_source(uri: StorageUri, transfer: TransferConfig) -> Source:
    if os.environ.get("ZEROSERVE_S3_CLIENT", "aiohttp") == "obstore":
        from runtime.storage.sources.objstore import ObjectStoreSource

        return ObjectStoreSource.for_uri(uri)
    return S3Source(uri, S3Config.from_env(), transfer)


class S3Source:
    scheme = "s3"
    list_page_size = 1000  # S3's maximum; tests lower it to walk continuation tokens

    def __init__(self, uri: StorageUri, config: S3Config, transfer: TransferConfig | None = None) -> None:
        self.uri = uri
        self.config = config
        self._session = new_session(transfer or TransferConfig())
        self._etag_not_md5: set[str] = set()
        parts = urlsplit(config.endpoint)
        netloc = parts.netloc
        if (parts.scheme, parts.port) in (("http", 80), ("https", 443)):
            netloc = netloc.rsplit(":", 1)[0]  # clients send Host without a default port; sign the same
        bucket_dotted = "." in uri.bucket
        if config.path_style or bucket_dotted:
            self._host = netloc
            self._base_path = f"/{uri_encode(uri.bucket, keep_slash=False)}"
        else:
            self._host = f"{uri.bucket}.{netloc}"
            self._base_path = ""
        self._scheme = parts.scheme

    async def close(self) -> None:
        await self._session.close()

    def _signed(self, key: str, params: dict[str, str]) -> tuple[URL, dict[str, str]]:
        path = f"{self._base_path}/{uri_encode(key, keep_slash=True)}" if key else f"{self._base_path}/"
        query = canonical_query(params)
        headers: dict[str, str] = {}
        if self.config.credentials is not None:
            headers = sign_get(
                self.config.credentials, self.config.region, self._host, path, query, datetime.now(UTC)
            )
        url = f"{self._scheme}://{self._host}{path}" + (f"?{query}" if query else "")
        return URL(url, encoded=True), headers

    async def listing(self) -> Listing:
        prefix = self.uri.key
        objects = await self._list_objects(prefix)
        exact = [o for o in objects if o[0] == prefix and prefix]
        if exact:
            key, size, etag = exact[0]
            name = safe_relative_path(self.uri.raw, key.rsplit("/", 1)[-1])
            f = self._file(name, key, size, etag)
            return Listing(version=etag or str(size), files=(f,), single_object=True)
        base = prefix if prefix.endswith("/") or not prefix else prefix + "/"
        files = [
            self._file(safe_relative_path(self.uri.raw, key[len(base) :]), key, size, etag)
            for key, size, etag in objects
            if key.startswith(base) and not key.endswith("/")
        ]
        if not files:
            raise NotFoundError(self.uri.raw, "not found (no objects under this prefix)")
        files.sort(key=lambda f: f.path)
        fingerprint = "\n".join(f"{f.ref}|{f.size_bytes}|{f.etag}" for f in files)
        return Listing(version=hashlib.sha256(fingerprint.encode()).hexdigest()[:32], files=tuple(files))

    def _file(self, path: str, key: str, size: int, etag: str) -> RemoteFile:
        md5 = etag if _MD5_ETAG.match(etag) else None  # multipart ETags ("...-N") are not an MD5
        return RemoteFile(path=path, size_bytes=size, ref=key, etag=etag, md5=md5)

    async def _list_objects(self, prefix: str) -> list[tuple[str, int, str]]:
        out: list[tuple[str, int, str]] = []
        token: str | None = None
        while True:
            params = {"list-type": "2", "prefix": prefix, "max-keys": str(self.list_page_size)}
            if token:
                params["continuation-token"] = token
            url, headers = self._signed("", params)
            try:
                async with self._session.get(url, headers=headers) as resp:
                    body = await resp.read()
                    if resp.status == 404:
                        raise NotFoundError(self.uri.raw, f"not found (bucket {self.uri.bucket!r}: HTTP 404)")
                    check_status(self.uri.raw, resp.status, _s3_error(body) or resp.reason or "", "list")
            except (aiohttp.ClientError, TimeoutError) as err:
                raise TransientError(self.uri.raw, f"list: {type(err).__name__}: {err}") from err
            root = ET.fromstring(body)
            for item in root.iter(f"{_NS}Contents"):
                key = item.findtext(f"{_NS}Key", "")
                size = int(item.findtext(f"{_NS}Size", "0"))
                etag = item.findtext(f"{_NS}ETag", "").strip('"').lower()
                out.append((key, size, etag))
            token = root.findtext(f"{_NS}NextContinuationToken")
            if root.findtext(f"{_NS}IsTruncated") != "true" or not token:
                return out

    async def read(self, f: RemoteFile, start: int, end: int) -> AsyncIterator[bytes | memoryview]:
        url, headers = self._signed(f.ref, {})

        def note_encryption(resp_headers: CIMultiDictProxy[str]) -> None:
            sse = resp_headers.get("x-amz-server-side-encryption", "")
            if sse in _ETAG_NOT_MD5_SSE or "x-amz-server-side-encryption-customer-algorithm" in resp_headers:
                self._etag_not_md5.add(f.ref)

        stream = stream_get(self._session, self.uri.raw, url, headers, f, start, end, note_encryption)
        async for chunk in stream:
            yield chunk

    def verified_digests(self, f: RemoteFile) -> RemoteFile:
        if f.ref in self._etag_not_md5:
            return dataclasses.replace(f, md5=None)
        return f


def _s3_error(body: bytes) -> str:
    """The <Code> of an S3 error document, for a more useful one-line message."""
    try:
        return ET.fromstring(body).findtext("Code") or ""
    except ET.ParseError:
        return ""
