"""prefetch() and materialize(): the storage initializer's async API (see the package docstring)."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.storage import metrics
from runtime.storage.archive import extract, is_archive
from runtime.storage.cache import NodeCache
from runtime.storage.config import TransferConfig
from runtime.storage.errors import DiskFullError, NotFoundError, StorageError, TransientError
from runtime.storage.local import link_tree, read_local
from runtime.storage.progress import Progress, report_progress
from runtime.storage.sources import Listing, Source, open_source
from runtime.storage.transfer import Downloader, remove_tree
from runtime.storage.uri import StorageUri, parse_uri

log = logging.getLogger(__name__)
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True, slots=True)
class FetchResult:
    uri: str
    dest: Path
    cache_hit: bool  # True when no byte was downloaded by this call
    bytes: int  # size of the model delivered into dest
    files: int
    seconds: float

    def summary(self) -> str:
        rate = self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0
        return (
            f"storage-init uri={self.uri} dest={self.dest} cache={'hit' if self.cache_hit else 'miss'} "
            f"files={self.files} bytes={self.bytes} seconds={self.seconds:.3f} MBps={rate:.1f}"
        )


@dataclass(frozen=True, slots=True)
class _Ensured:
    entry: Path
    downloaded: bool
    nbytes: int


async def _listing(
    uri: StorageUri, source: Source, cache: NodeCache | None, config: TransferConfig
) -> tuple[Listing | None, Path | None]:
    """Ask the store what the URI holds now (with retries); if it stays unreachable, fall back to
    the cached copy of the same URI so a node can still start replicas during a store outage."""
    for attempt in range(config.attempts):
        try:
            return await source.listing(), None
        except TransientError as err:
            if attempt + 1 < config.attempts:
                delay = min(config.max_backoff_s, config.backoff_s * 2**attempt)
                log.warning("listing %s failed (%s); retrying in %.1fs", uri.raw, err.cause, delay)
                await asyncio.sleep(delay)
                continue
            cached = cache.find_uri(uri.raw) if cache is not None else None
            if cached is None:
                raise
            log.warning("store unreachable (%s); using the cached copy of %s", err.cause, uri.raw)
            return None, cached.path
    raise AssertionError("unreachable: the loop returns or raises")


async def _download(
    uri: StorageUri, source: Source, listing: Listing, staging: Path, config: TransferConfig
) -> Path:
    """Fetch into `staging` and return the finished data directory (archives unpacked)."""
    progress = Progress(total_bytes=listing.total_bytes)
    reporter = asyncio.create_task(report_progress(progress))
    try:
        await Downloader(uri.raw, source, staging, config, progress).run(listing.files)
    finally:
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)
    done = staging / "done"
    if listing.single_object and is_archive(listing.files[0].path):
        unpacked = staging / "unpacked"
        remove_tree(unpacked)
        try:
            await asyncio.to_thread(extract, uri.raw, done / listing.files[0].path, unpacked)
        except BaseException:
            remove_tree(unpacked)
            remove_tree(staging)  # a rejected archive must not be resumed either
            raise
        return unpacked
    return done


def _known_entry(uri: StorageUri, cache: NodeCache) -> Path | None:
    """An entry usable without asking the store: an immutable URI (hf:// pinned to a commit,
    whose listing version is that commit) or one validated within cache.fresh_for_s."""
    if uri.scheme == "hf" and _COMMIT.match(uri.key):
        entry = cache.lookup(cache.key_for(uri.raw, uri.key))
        if entry is not None:
            return entry
    return cache.fresh_entry(uri.raw, time.time())


async def _ensure(uri: StorageUri, cache: NodeCache, config: TransferConfig) -> _Ensured:
    known = _known_entry(uri, cache)
    if known is not None:
        cache.touch(known.name)
        return _Ensured(known, False, 0)
    source = open_source(uri, config)
    try:
        listing, fallback = await _listing(uri, source, cache, config)
        if listing is None:
            assert fallback is not None
            return _Ensured(fallback, False, 0)
        key = cache.key_for(uri.raw, listing.version)
        entry = cache.lookup(key)
        if entry is not None:
            cache.touch(key, validated=True)
            return _Ensured(entry, False, 0)
        async with cache.lock(key):
            entry = cache.lookup(key)  # another replica may have finished while we waited
            if entry is not None:
                cache.touch(key)
                return _Ensured(entry, False, 0)
            started = time.monotonic()
            staging = cache.staging_dir(key)
            data = await _download(uri, source, listing, staging, config)
            # Walking, chmod-ing and deleting thousands of files would stall the caller's loop.
            entry = await asyncio.to_thread(cache.publish, key, data, uri.raw, listing.version)
            await asyncio.to_thread(remove_tree, staging)
            metrics.record(uri.scheme, False, listing.total_bytes, time.monotonic() - started)
        await asyncio.to_thread(cache.prune, None, frozenset({key}))
        return _Ensured(entry, True, listing.total_bytes)
    except OSError as err:
        raise _os_error(uri.raw, err) from err
    finally:
        await source.close()


def _os_error(uri: str, err: OSError) -> StorageError:
    if err.errno == errno.ENOSPC:
        return DiskFullError(uri, f"disk full ({err.filename or ''})")
    return StorageError(uri, f"{err.strerror or err} ({err.filename or ''})")


async def prefetch(uri: str, cache: NodeCache, config: TransferConfig | None = None) -> Path:
    """Make sure the node cache holds `uri`; return the entry directory (its files are under data/).
    file:// and pvc:// are read in place, never cached: their path is returned as it is."""
    parsed = parse_uri(uri)
    if parsed.is_local:
        assert parsed.local_path is not None
        if not await asyncio.to_thread(parsed.local_path.exists):
            raise NotFoundError(uri, f"not found ({parsed.local_path} does not exist)")
        return parsed.local_path
    ensured = await _ensure(parsed, cache, config or TransferConfig())
    return ensured.entry


def _read_meta(entry: Path) -> dict[str, Any] | None:
    try:
        meta: dict[str, Any] = json.loads((entry / "meta.json").read_text())
    except (OSError, ValueError):
        return None  # evicted between lookup and lock
    return meta


async def materialize(
    uri: str, dest: Path, cache: NodeCache | None, config: TransferConfig | None = None
) -> FetchResult:
    """Deliver the model at `uri` into `dest`: from the node cache by hard links when one is given,
    else downloaded straight into `dest` (through a hidden staging folder beside it)."""
    started = time.monotonic()
    parsed = parse_uri(uri)
    dest = Path(os.getcwd(), dest)  # absolute: symlink fallbacks and logs need full paths
    try:
        if parsed.is_local:
            nbytes, files = await asyncio.to_thread(read_local, parsed, dest)
            return FetchResult(uri, dest, False, nbytes, files, time.monotonic() - started)
        cfg = config or TransferConfig()
        if cache is None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            scratch_dir = dest.parent / f".zeroserve-{uuid.uuid4().hex[:8]}"
            scratch = NodeCache(scratch_dir, budget_bytes=1 << 62, read_only=False)
            try:
                ensured = await _ensure(parsed, scratch, cfg)
                nbytes, files = await asyncio.to_thread(link_tree, ensured.entry / "data", dest)
            finally:
                await asyncio.to_thread(shutil.rmtree, scratch.root, True)
        else:
            for _attempt in range(3):
                ensured = await _ensure(parsed, cache, cfg)
                async with cache.lock(ensured.entry.name, shared=True):  # keeps eviction away while we link
                    # Another process may have evicted it between our lookup and the lock.
                    meta = _read_meta(ensured.entry)
                    if meta is not None:
                        _, files = await asyncio.to_thread(
                            link_tree, ensured.entry / "data", dest, count_bytes=False
                        )
                        nbytes = int(meta["bytes"])
                        break
            else:
                raise StorageError(uri, "cache entry kept being evicted while linking; budget too small?")
    except OSError as err:
        raise _os_error(uri, err) from err
    if not ensured.downloaded:
        metrics.record(parsed.scheme, True, nbytes, None)
    return FetchResult(uri, dest, not ensured.downloaded, nbytes, files, time.monotonic() - started)
