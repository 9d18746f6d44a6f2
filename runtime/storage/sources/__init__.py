"""URI schemes: each turns a parsed URI into a Listing and streams byte ranges of its files."""

from __future__ import annotations

from runtime.storage.config import TransferConfig
from runtime.storage.errors import BadUriError
from runtime.storage.sources.base import Listing, RemoteFile, Source
from runtime.storage.uri import StorageUri

__all__ = ["Listing", "RemoteFile", "Source", "open_source"]


def open_source(uri: StorageUri, config: TransferConfig) -> Source:
    """The Source for a remote URI (file:// and pvc:// never get here: they are read in place)."""
    if uri.scheme in ("http", "https"):
        from runtime.storage.sources.http import HttpSource

        return HttpSource(uri, config)
    if uri.scheme == "s3":
        from runtime.storage.sources.s3 import make_s3_source

        return make_s3_source(uri, config)
    if uri.scheme == "hf":
        from runtime.storage.sources.hf import HfSource

        return HfSource(uri, config)
    if uri.scheme in ("gs", "az"):
        from runtime.storage.sources.objstore import ObjectStoreSource

        return ObjectStoreSource.for_uri(uri)
    raise BadUriError(uri.raw, f"no remote source for scheme {uri.scheme!r}")
