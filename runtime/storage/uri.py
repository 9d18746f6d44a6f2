"""Parse a storage URI into the scheme-specific parts the sources need.

Accepted forms (KServe's, plus hf:// and az://):
  file:///abs/path   pvc://claim/sub/path (mounted under ZEROSERVE_PVC_ROOT, default /mnt/pvc)
  http(s)://host/path   https://<account>.blob.core.windows.net/<container>/<path> (treated as az)
  s3://bucket/prefix   gs://bucket/prefix   az://account/container/prefix
  hf://org/model[@revision]
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from runtime.storage.errors import BadUriError

SCHEMES = ("file", "pvc", "http", "https", "s3", "gs", "az", "hf")
_AZURE_HOST = re.compile(r"^(?P<account>[a-z0-9]{3,24})\.blob\.core\.windows\.net$")
_HF_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@dataclass(frozen=True, slots=True)
class StorageUri:
    """A parsed URI. `bucket`/`key` mean bucket+prefix for object stores, repo+revision for hf."""

    raw: str
    scheme: str
    bucket: str = ""
    key: str = ""
    account: str = ""
    local_path: Path | None = None

    @property
    def is_local(self) -> bool:
        return self.scheme in ("file", "pvc")


def parse_uri(raw: str) -> StorageUri:
    """Parse `raw` or raise BadUriError with the reason."""
    uri = raw.strip()
    if "://" not in uri:
        raise BadUriError(raw, f"not a URI (expected one of {', '.join(s + '://' for s in SCHEMES)})")
    scheme, rest = uri.split("://", 1)
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise BadUriError(raw, f"unsupported scheme {scheme!r} (supported: {', '.join(SCHEMES)})")
    if scheme == "file":
        path = Path(unquote(urlsplit(uri).path))
        if not path.is_absolute():
            raise BadUriError(raw, "file:// needs an absolute path (file:///dir/model)")
        return StorageUri(raw, "file", local_path=path)
    if scheme == "pvc":
        claim, _, sub = rest.partition("/")
        if not claim:
            raise BadUriError(raw, "pvc:// needs a claim name (pvc://claim/path)")
        root = Path(os.environ.get("ZEROSERVE_PVC_ROOT", "/mnt/pvc"))
        return StorageUri(raw, "pvc", bucket=claim, key=sub, local_path=root / claim / sub)
    if scheme in ("http", "https"):
        parts = urlsplit(uri)
        if not parts.hostname:
            raise BadUriError(raw, "missing host")
        match = _AZURE_HOST.match(parts.hostname)
        if match and scheme == "https":
            container, _, key = parts.path.lstrip("/").partition("/")
            if not container:
                raise BadUriError(raw, "Azure blob URL needs a container")
            return StorageUri(raw, "az", account=match["account"], bucket=container, key=unquote(key))
        return StorageUri(raw, scheme)
    if scheme == "hf":
        repo, _, revision = rest.rstrip("/").partition("@")
        if not _HF_REPO.match(repo):
            raise BadUriError(raw, "expected hf://org/model[@revision]")
        return StorageUri(raw, "hf", bucket=repo, key=revision or "main")
    if scheme == "az":
        account, _, remainder = rest.partition("/")
        container, _, key = remainder.partition("/")
        if not account or not container:
            raise BadUriError(raw, "expected az://account/container/path")
        return StorageUri(raw, "az", account=account, bucket=container, key=key)
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise BadUriError(raw, f"expected {scheme}://bucket/prefix")
    return StorageUri(raw, scheme, bucket=bucket, key=key)
