"""gs://, az:// (and s3:// with ZEROSERVE_S3_CLIENT=obstore) through obstore (Rust object_store).

obstore brings each cloud's full credential chain (GCP service accounts and workload identity, Azure
keys/SAS/managed identity, AWS web identity and instance metadata), which we would otherwise have to
re-implement. We still drive it with our own engine: obstore only lists and streams byte ranges, and
the parallel parts, resume, checksums and cache are the same code as for every other scheme.
Configuration is obstore's environment variables (GOOGLE_*, AZURE_STORAGE_*, AWS_*).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import AsyncIterator
from typing import Any

from runtime.storage.errors import (
    AccessDeniedError,
    BadUriError,
    NotFoundError,
    StorageError,
    TransientError,
)
from runtime.storage.sources.base import READ_CHUNK_BYTES, Listing, RemoteFile, safe_relative_path
from runtime.storage.uri import StorageUri

_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")


def _import_obstore() -> Any:
    try:
        import obstore
    except ImportError as err:  # optional dependency: only gs/az need it
        raise StorageError("obstore", "gs:// and az:// need the obstore package") from err
    return obstore


class ObjectStoreSource:
    def __init__(self, uri: StorageUri, store: Any) -> None:
        self.uri = uri
        self.scheme = uri.scheme
        self._store = store
        self._obs = _import_obstore()

    @classmethod
    def for_uri(cls, uri: StorageUri) -> ObjectStoreSource:
        obs = _import_obstore()
        from obstore.store import AzureStore, GCSStore, S3Store

        if uri.scheme == "gs":
            return cls(uri, GCSStore(uri.bucket))
        if uri.scheme == "az":
            return cls(uri, AzureStore(container_name=uri.bucket, account_name=uri.account))
        if uri.scheme == "s3":
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
            kwargs: dict[str, Any] = {"region": region}
            if endpoint:
                kwargs["endpoint"] = endpoint
                kwargs["virtual_hosted_style_request"] = False
            client: Any = {"allow_http": bool(endpoint and endpoint.startswith("http://"))}
            return cls(uri, S3Store(uri.bucket, client_options=client, **kwargs))
        del obs
        raise BadUriError(uri.raw, f"obstore does not serve {uri.scheme}://")

    async def close(self) -> None:
        return None

    def _map_error(self, err: Exception, what: str) -> StorageError:
        exc = self._obs.exceptions
        # obstore raises FileNotFoundError/PermissionError subclasses; messages run to many lines.
        first_line = (str(err).splitlines() or [type(err).__name__])[0]
        if isinstance(err, exc.NotFoundError | FileNotFoundError):
            return NotFoundError(self.uri.raw, f"not found ({what})")
        if isinstance(err, exc.PermissionDeniedError | exc.UnauthenticatedError | PermissionError):
            return AccessDeniedError(self.uri.raw, f"access denied ({what}); check credentials")
        if isinstance(err, exc.BaseError | ConnectionError | TimeoutError):
            return TransientError(self.uri.raw, f"{what}: {first_line}")
        return StorageError(self.uri.raw, f"{what}: {type(err).__name__}: {first_line}")

    async def listing(self) -> Listing:
        key = self.uri.key.strip("/")
        if key and not self.uri.key.endswith("/"):
            try:
                meta = await self._obs.head_async(self._store, key)
            except (self._obs.exceptions.NotFoundError, FileNotFoundError):
                meta = None
            except Exception as err:
                raise self._map_error(err, "head") from err
            if meta is not None:
                name = safe_relative_path(self.uri.raw, key.rsplit("/", 1)[-1])
                f = self._file(name, meta)
                return Listing(version=f.etag or str(f.size_bytes), files=(f,), single_object=True)
        files: list[RemoteFile] = []
        try:
            async for batch in self._obs.list(self._store, prefix=key or None, chunk_size=1000):
                for meta in batch:
                    path = str(meta["path"])
                    if path.endswith("/"):
                        continue
                    rel = path[len(key) :].lstrip("/") if key else path
                    files.append(self._file(safe_relative_path(self.uri.raw, rel), meta))
        except StorageError:
            raise
        except Exception as err:
            raise self._map_error(err, "list") from err
        if not files:
            raise NotFoundError(self.uri.raw, "not found (no objects under this prefix)")
        files.sort(key=lambda f: f.path)
        fingerprint = "\n".join(f"{f.ref}|{f.size_bytes}|{f.etag}" for f in files)
        return Listing(version=hashlib.sha256(fingerprint.encode()).hexdigest()[:32], files=tuple(files))

    def _file(self, rel: str, meta: Any) -> RemoteFile:
        etag = str(meta.get("e_tag") or "").strip('"').lower()
        version = str(meta.get("version") or "")
        # Only S3's single-part ETag is the MD5 of the bytes (GCS and Azure ETags are opaque).
        md5 = etag if self.scheme == "s3" and _MD5_ETAG.match(etag) else None
        return RemoteFile(
            path=rel, size_bytes=int(meta["size"]), ref=str(meta["path"]), etag=etag or version, md5=md5
        )

    async def read(self, f: RemoteFile, start: int, end: int) -> AsyncIterator[bytes | memoryview]:
        try:
            result = await self._obs.get_async(self._store, f.ref, options={"range": (start, end)})
            async for chunk in result.stream(min_chunk_size=READ_CHUNK_BYTES):
                yield chunk
        except StorageError:
            raise
        except Exception as err:
            raise self._map_error(err, f.path) from err

    def verified_digests(self, f: RemoteFile) -> RemoteFile:
        return f
