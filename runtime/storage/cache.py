"""The node cache: content-addressed model directories shared by every replica on the machine.

Layout under the root (ZEROSERVE_CACHE_DIR, default ~/.cache/zeroserve):
  entries/<key>/data/...     published, read-only files; <key> = sha256(URI, version)[:32]
  entries/<key>/meta.json    {"uri", "version", "bytes", "files", "created_at"}
  entries/<key>/last_used    touched on every use: its mtime orders LRU eviction
  staging/<key>/             downloads in progress (.partial files + journals, done/ files)
  locks/<key>.lock           fcntl.flock: exclusive while downloading/evicting, shared while linking
An entry appears by one rename of a finished directory, so nothing half-done ever looks complete.
Replicas get hard links, so evicting an entry never breaks a running replica: its links keep the data.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
DEFAULT_BUDGET_BYTES = 100 * (1 << 30)
LOCK_POLL_S = 0.02
STALE_STAGING_S = 24 * 3600.0
STALE_DOT_DIR_S = 3600.0  # publishing or deleting never takes this long


@dataclass(frozen=True, slots=True)
class CacheEntry:
    key: str
    uri: str
    version: str
    size_bytes: int
    files: int
    last_used_s: float  # unix time
    path: Path


def parse_bytes(text: str) -> int:
    """'50G', '512Mi', '1073741824' -> bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


@dataclass(frozen=True, slots=True)
class NodeCache:
    root: Path
    budget_bytes: int = DEFAULT_BUDGET_BYTES
    read_only: bool = True  # shared entries are; a private scratch cache (no node cache) is not
    # An entry checked against the store less than this long ago is used without asking again
    # (0: every use lists the store first). Saves the round trip on a scale from zero right after
    # a prefetch; the price is serving a model up to this old after it changed in the store.
    fresh_for_s: float = 0.0

    @classmethod
    def default(cls) -> NodeCache:
        root = os.environ.get("ZEROSERVE_CACHE_DIR") or str(Path.home() / ".cache" / "zeroserve")
        budget = os.environ.get("ZEROSERVE_CACHE_BYTES")
        fresh = float(os.environ.get("ZEROSERVE_CACHE_FRESH_S", "0"))
        return cls(Path(root), parse_bytes(budget) if budget else DEFAULT_BUDGET_BYTES, fresh_for_s=fresh)

    @staticmethod
    def key_for(uri: str, version: str) -> str:
        return hashlib.sha256(f"{uri}\n{version}".encode()).hexdigest()[:32]

    def entry_dir(self, key: str) -> Path:
        return self.root / "entries" / key

    def staging_dir(self, key: str) -> Path:
        return self.root / "staging" / key

    def lookup(self, key: str) -> Path | None:
        path = self.entry_dir(key)
        return path if (path / "meta.json").is_file() else None

    def touch(self, key: str, *, validated: bool = False) -> None:
        """Record a use (LRU order) and, when the store just confirmed the version, a validation."""
        with contextlib.suppress(OSError):
            (self.entry_dir(key) / "last_used").touch()
            if validated:
                (self.entry_dir(key) / "validated").touch()

    def fresh_entry(self, uri: str, now_s: float) -> Path | None:
        """The entry for `uri` if it was validated within `fresh_for_s` of `now_s` (unix time)."""
        if self.fresh_for_s <= 0:
            return None
        entry = self.find_uri(uri)
        if entry is None:
            return None
        try:
            validated_s = (entry.path / "validated").stat().st_mtime
        except OSError:
            return None
        return entry.path if now_s - validated_s < self.fresh_for_s else None

    @contextlib.asynccontextmanager
    async def lock(self, key: str, *, shared: bool = False) -> AsyncIterator[None]:
        """Cross-process lock on one entry. Polls with LOCK_NB so waiting stays cancellable."""
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_dir / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
            while True:
                try:
                    fcntl.flock(fd, mode)
                    break
                except BlockingIOError:
                    await asyncio.sleep(LOCK_POLL_S)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def try_lock_exclusive(self, key: str) -> int | None:
        """A held exclusive lock fd, or None if someone is using the entry (eviction skips it)."""
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_dir / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def publish(self, key: str, data_dir: Path, uri: str, version: str) -> Path:
        """Move a finished `data_dir` in as entry `key` (caller holds the exclusive lock)."""
        nbytes = 0
        nfiles = 0
        for dirpath, _dirs, names in os.walk(data_dir):
            for name in names:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                nbytes += st.st_size
                nfiles += 1
                if self.read_only and not os.path.islink(p):
                    # Read-only: every replica shares these inodes through hard links.
                    os.chmod(p, 0o444)
        build = self.root / "entries" / f".build-{key}-{os.getpid()}"
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir(parents=True)
        os.rename(data_dir, build / "data")
        meta = {"uri": uri, "version": version, "bytes": nbytes, "files": nfiles, "created_at": time.time()}
        (build / "meta.json").write_text(json.dumps(meta))
        (build / "last_used").touch()
        (build / "validated").touch()
        final = self.entry_dir(key)
        shutil.rmtree(final, ignore_errors=True)  # a leftover without meta.json (lookup said absent)
        os.rename(build, final)
        return final

    def entries(self) -> list[CacheEntry]:
        out: list[CacheEntry] = []
        base = self.root / "entries"
        if not base.is_dir():
            return out
        for path in base.iterdir():
            if path.name.startswith("."):  # .build-* being published, .trash-* being deleted
                continue
            try:
                meta = json.loads((path / "meta.json").read_text())
                used = (path / "last_used").stat().st_mtime
            except (OSError, ValueError):
                continue
            nbytes, nfiles = int(meta["bytes"]), int(meta["files"])
            out.append(CacheEntry(path.name, meta["uri"], meta["version"], nbytes, nfiles, used, path))
        return sorted(out, key=lambda e: e.last_used_s)

    def find_uri(self, uri: str) -> CacheEntry | None:
        """The most recently used entry for `uri`, whatever its version (offline fallback)."""
        matches = [e for e in self.entries() if e.uri == uri]
        return matches[-1] if matches else None

    def remove(self, key: str) -> bool:
        """Delete one entry unless a replica is linking from it right now."""
        fd = self.try_lock_exclusive(key)
        if fd is None:
            return False
        try:
            path = self.entry_dir(key)
            if not path.exists():
                return False
            trash = self.root / "entries" / f".trash-{key}-{os.getpid()}"
            os.rename(path, trash)  # one rename: the entry vanishes atomically, deletion can be slow
            _force_rmtree(trash)
            shutil.rmtree(self.staging_dir(key), ignore_errors=True)
            return True
        finally:
            os.close(fd)

    def prune(self, budget_bytes: int | None = None, keep: frozenset[str] = frozenset()) -> list[CacheEntry]:
        """Evict least recently used entries until the total fits the budget."""
        budget = self.budget_bytes if budget_bytes is None else budget_bytes
        entries = self.entries()
        total = sum(e.size_bytes for e in entries)
        removed: list[CacheEntry] = []
        for entry in entries:
            if total <= budget:
                break
            if entry.key in keep:
                continue
            if self.remove(entry.key):
                total -= entry.size_bytes
                removed.append(entry)
                log.info("evicted %s (%d bytes) from the node cache", entry.uri, entry.size_bytes)
        self._drop_stale_staging()
        return removed

    def _drop_stale_staging(self, max_age_s: float = STALE_STAGING_S) -> None:
        """Partial downloads nobody resumed for a day (a version that changed meanwhile) go, and so
        do half-published or half-deleted entries left by a process that died."""
        entries = self.root / "entries"
        if entries.is_dir():
            for path in entries.iterdir():
                with contextlib.suppress(OSError):
                    if path.name.startswith(".") and time.time() - path.stat().st_mtime > STALE_DOT_DIR_S:
                        _force_rmtree(path)
        base = self.root / "staging"
        if not base.is_dir():
            return
        for path in base.iterdir():
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_mtime < max_age_s:
                    continue
                fd = self.try_lock_exclusive(path.name)
                if fd is None:
                    continue
                try:
                    shutil.rmtree(path, ignore_errors=True)
                finally:
                    os.close(fd)


def _force_rmtree(path: Path) -> None:
    for dirpath, dirs, _names in os.walk(path):
        for d in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(dirpath, d), 0o755)
    shutil.rmtree(path, ignore_errors=True)
