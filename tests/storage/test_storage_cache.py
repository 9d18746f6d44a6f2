"""The node cache: LRU eviction under a budget, locks that keep eviction off entries in use,
`zeroserve cache ls|rm|prune`, prefetch, the offline fallback, cross-device links, metrics."""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from runtime.storage import NodeCache, TransientError, materialize, prefetch
from runtime.storage.cache import parse_bytes
from runtime.storage.cli import cache_main
from runtime.storage.progress import Progress, report_progress
from storage_servers import FAST, FileServer, KiB, model_files


def put_entry(cache: NodeCache, uri: str, nbytes: int, used_s: float) -> str:
    key = cache.key_for(uri, "v1")
    data = cache.root / "tmp-data"
    data.mkdir(parents=True)
    (data / "blob").write_bytes(b"x" * nbytes)
    cache.publish(key, data, uri, "v1")
    os.utime(cache.entry_dir(key) / "last_used", (used_s, used_s))
    return key


def test_prune_evicts_least_recently_used_first(cache: NodeCache) -> None:
    now = time.time()
    old = put_entry(cache, "s3://b/old", 4 * KiB, now - 300)
    mid = put_entry(cache, "s3://b/mid", 4 * KiB, now - 200)
    new = put_entry(cache, "s3://b/new", 4 * KiB, now - 100)
    removed = cache.prune(budget_bytes=9 * KiB)
    assert [e.key for e in removed] == [old]
    assert {e.key for e in cache.entries()} == {mid, new}
    assert cache.prune(budget_bytes=0, keep=frozenset({new})) != []
    assert [e.key for e in cache.entries()] == [new]


async def test_entry_in_use_is_not_evicted(cache: NodeCache) -> None:
    key = put_entry(cache, "s3://b/busy", 4 * KiB, time.time() - 1000)
    async with cache.lock(key, shared=True):  # a replica is linking from it right now
        assert cache.prune(budget_bytes=0) == []
        assert cache.lookup(key) is not None
    assert [e.key for e in cache.prune(budget_bytes=0)] == [key]
    assert cache.lookup(key) is None


def test_cache_cli_ls_rm_prune(cache: NodeCache, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    a = put_entry(cache, "http://h/a.bin", 2 * KiB, now - 50)
    put_entry(cache, "http://h/b.bin", 3 * KiB, now - 10)
    root = ["--cache-dir", str(cache.root)]
    assert cache_main([*root, "ls", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["uri"], r["bytes"]) for r in rows] == [
        ("http://h/a.bin", 2 * KiB),
        ("http://h/b.bin", 3 * KiB),
    ]
    assert cache_main([*root, "ls"]) == 0
    assert "2 entries" in capsys.readouterr().out
    assert cache_main([*root, "rm", a]) == 0 and cache.lookup(a) is None
    assert cache_main([*root, "rm", "http://h/nope"]) == 1
    assert "no such entry" in capsys.readouterr().err
    assert cache_main([*root, "prune", "--budget", "1K"]) == 0
    assert "evicted 1 entries" in capsys.readouterr().out and cache.entries() == []
    assert cache_main([*root, "prune", "--budget", "lots"]) == 2


def test_default_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ZEROSERVE_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("ZEROSERVE_CACHE_BYTES", "50G")
    assert NodeCache.default() == NodeCache(tmp_path / "c", 50 << 30)
    monkeypatch.delenv("ZEROSERVE_CACHE_DIR")
    monkeypatch.delenv("ZEROSERVE_CACHE_BYTES")
    assert NodeCache.default().root == Path.home() / ".cache" / "zeroserve"
    assert [parse_bytes(t) for t in ("512Mi", "1.5G", "1024", "2kb")] == [512 << 20, 3 << 29, 1024, 2048]


async def test_prefetch_then_cold_start_is_a_hit(
    file_server: FileServer, cache: NodeCache, tmp_path: Path
) -> None:
    file_server.files = model_files()
    entry = await prefetch(f"{file_server.url}/m/", cache, FAST)
    assert (entry / "data" / "big.bin").read_bytes() == file_server.files["/m/big.bin"]
    gets = len(file_server.log)
    hit = await materialize(f"{file_server.url}/m/", tmp_path / "replica", cache, FAST)
    assert hit.cache_hit and len(file_server.log) == gets
    hit_bytes = REGISTRY.get_sample_value("zeroserve_storage_bytes_total", {"scheme": "http", "cache": "hit"})
    miss_bytes = REGISTRY.get_sample_value(
        "zeroserve_storage_bytes_total", {"scheme": "http", "cache": "miss"}
    )
    assert hit_bytes is not None and hit_bytes >= hit.bytes
    assert miss_bytes is not None and miss_bytes >= hit.bytes
    assert REGISTRY.get_sample_value("zeroserve_storage_download_seconds_count", {"scheme": "http"})


async def test_store_down_falls_back_to_the_cached_copy(
    file_server: FileServer, cache: NodeCache, tmp_path: Path
) -> None:
    file_server.files = model_files()
    await prefetch(f"{file_server.url}/m/", cache, FAST)
    file_server.status["/m/"] = 503  # the store is unreachable for listing
    hit = await materialize(f"{file_server.url}/m/", tmp_path / "d", cache, FAST)
    assert hit.cache_hit and (tmp_path / "d" / "config.json").exists()
    with pytest.raises(TransientError, match="503"):  # no cached copy of another URI to fall back to
        file_server.status["/other/"] = 503
        await materialize(f"{file_server.url}/other/", tmp_path / "e", cache, FAST)


async def test_cross_device_destination_gets_symlinks(
    file_server: FileServer, cache: NodeCache, tmp_path: Path
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem to link across")
    file_server.files = model_files()
    with tempfile.TemporaryDirectory(dir=shm) as other:
        result = await materialize(f"{file_server.url}/m/", Path(other) / "d", cache, FAST)
        link = Path(other) / "d" / "big.bin"
        assert link.is_symlink() and Path(os.readlink(link)).is_relative_to(cache.root)
        assert link.read_bytes() == file_server.files["/m/big.bin"] and result.files == len(file_server.files)


class FakeTerminal(io.StringIO):
    """A terminal stand-in: progress is drawn only on a TTY."""

    def isatty(self) -> bool:
        return True


async def test_progress_line_on_a_terminal_only() -> None:
    import asyncio

    progress = Progress(total_bytes=4 << 20)
    progress.add(1 << 20)
    line = progress.line(progress.started_s + 1.0)
    assert line.startswith("1.0 MiB / 4.0 MiB (25%) 1.0 MiB/s ETA 3s")
    tty, pipe = FakeTerminal(), io.StringIO()
    tasks = [asyncio.create_task(report_progress(progress, s, interval_s=0.01)) for s in (tty, pipe)]
    await asyncio.sleep(0.05)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert "MiB / 4.0 MiB" in tty.getvalue() and pipe.getvalue() == ""


def test_bad_flags_return_2_instead_of_exiting(capsys: pytest.CaptureFixture[str]) -> None:
    from runtime.storage.cli import storage_init_main

    assert cache_main(["bogus"]) == 2
    assert storage_init_main(["only-one-arg"]) == 2
    assert storage_init_main(["--help"]) == 0
    capsys.readouterr()


async def test_hits_refresh_lru_and_eviction_spares_running_replicas(
    file_server: FileServer, cache: NodeCache, tmp_path: Path
) -> None:
    file_server.files = {**model_files("/a/"), **model_files("/b/")}
    await materialize(f"{file_server.url}/a/", tmp_path / "ra", cache, FAST)
    await materialize(f"{file_server.url}/b/", tmp_path / "rb", cache, FAST)
    now = time.time()
    for entry, age_s in zip(sorted(cache.entries(), key=lambda e: e.uri), (200, 100), strict=True):
        os.utime(entry.path / "last_used", (now - age_s, now - age_s))  # a is the older one
    await materialize(f"{file_server.url}/a/", tmp_path / "ra2", cache, FAST)  # now a is the most recent
    assert [e.uri for e in cache.entries()][-1] == f"{file_server.url}/a/"
    size = cache.entries()[0].size_bytes
    evicted = cache.prune(budget_bytes=size)
    assert [e.uri for e in evicted] == [f"{file_server.url}/b/"]
    # The replica that was using b keeps working: its hard links hold the data.
    assert (tmp_path / "rb" / "big.bin").read_bytes() == file_server.files["/b/big.bin"]


async def test_concurrent_prefetch_in_one_process_downloads_once(
    file_server: FileServer, cache: NodeCache
) -> None:
    import asyncio

    file_server.files = model_files()
    file_server.chunk_delay_s = 0.005
    entries = await asyncio.gather(*(prefetch(f"{file_server.url}/m/", cache, FAST) for _ in range(3)))
    assert len(set(entries)) == 1
    for path in file_server.files:
        if file_server.files[path]:
            ranges = [(s.start, s.end) for s in file_server.gets(path)]
            assert len(ranges) == len(set(ranges)), path  # no range fetched twice
    assert len(file_server.gets("/m/config.json")) == 1


async def test_cache_prefetch_command_warms_from_a_list_file(file_server: FileServer, tmp_path: Path) -> None:
    from storage_servers import acli

    file_server.files = {**model_files("/a/"), **model_files("/b/")}
    uris = tmp_path / "uris"
    uris.write_text(f"# models to keep warm\n{file_server.url}/a/\n\n{file_server.url}/missing/\n")
    root = ["--cache-dir", str(tmp_path / "c")]
    code, out = await acli("cache", *root, "prefetch", f"{file_server.url}/b/", "--list-file", str(uris))
    assert code == 1  # one URI failed ...
    assert f"{file_server.url}/missing/: not found" in out and "Traceback" not in out
    warmed = {e.uri for e in NodeCache(tmp_path / "c").entries()}
    assert warmed == {f"{file_server.url}/a/", f"{file_server.url}/b/"}  # ... the others were warmed


def test_leftovers_of_a_dead_process_are_not_entries_and_get_cleaned(cache: NodeCache) -> None:
    key = put_entry(cache, "s3://b/real", KiB, time.time())
    for name in (f".build-{key}-999", f".trash-{key}-998"):
        leftover = cache.root / "entries" / name
        (leftover / "data").mkdir(parents=True)
        (leftover / "meta.json").write_text(json.dumps({"uri": "x", "version": "v", "bytes": 1, "files": 1}))
        (leftover / "last_used").touch()
        old = time.time() - 7200
        os.utime(leftover, (old, old))
    assert [e.key for e in cache.entries()] == [key]
    cache.prune()
    assert sorted(p.name for p in (cache.root / "entries").iterdir()) == [key]


async def test_fresh_entries_skip_the_store_until_they_age(file_server: FileServer, tmp_path: Path) -> None:
    file_server.files = model_files()
    uri = f"{file_server.url}/m/"
    cache = NodeCache(tmp_path / "c", fresh_for_s=60)
    entry = await prefetch(uri, cache, FAST)
    listed = file_server.listings
    hit = await materialize(uri, tmp_path / "r1", cache, FAST)
    assert hit.cache_hit and file_server.listings == listed  # validated a moment ago: no round trip
    old = time.time() - 120
    os.utime(entry / "validated", (old, old))
    await materialize(uri, tmp_path / "r2", cache, FAST)
    assert file_server.listings > listed  # stale: asked the store again ...
    assert time.time() - (entry / "validated").stat().st_mtime < 60  # ... which re-validated it
    strict = NodeCache(tmp_path / "c")  # fresh_for_s=0: always asks
    listed = file_server.listings
    await materialize(uri, tmp_path / "r3", strict, FAST)
    assert file_server.listings > listed
