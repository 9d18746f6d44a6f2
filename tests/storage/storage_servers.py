"""Real servers for the storage tests (fixtures re-exported by conftest.py): an aiohttp file server
with Range support and injectable faults, and a moto S3 server subprocess."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from runtime.storage import NodeCache, TransferConfig

ROOT = Path(__file__).resolve().parents[2]
KiB = 1 << 10
MiB = 1 << 20
# Small parts so a 3 MiB file takes the ranged, parallel path in tests.
FAST = TransferConfig(concurrency=4, part_size_bytes=256 * KiB, min_ranged_bytes=512 * KiB, backoff_s=0.01)


async def serve_on_free_port(runner: web.AppRunner) -> str:
    """Start `runner` (set up) on a port the kernel picks as it binds, and return its base URL.

    A port chosen first and bound later can be taken in between by any process on the machine."""
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return f"http://127.0.0.1:{runner.addresses[0][1]}"


def wait_for_listening(
    proc: subprocess.Popen[bytes], log_path: Path, pattern: str, timeout_s: float, what: str
) -> int:
    """The port a subprocess server bound to port 0 reports in its log once it listens.

    The server writes the log through its own handle and this reads it afresh each time, so no
    file offset is shared. The pattern must match the whole port: a line read half-written ends
    inside the number, and must not match.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        text = log_path.read_text(errors="replace")
        match = re.search(pattern, text)
        if match:
            return int(match.group(1))
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            raise RuntimeError(f"{what} did not start in {timeout_s:.0f} s (exit {proc.returncode}):\n{text}")
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it is still there after timeout_s: teardown never hangs on it."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Served:
    method: str
    path: str
    start: int
    end: int  # exclusive
    sent: int = 0


@dataclass
class FileServer:
    """Serves `files` (path -> bytes) with ranges, JSON directory listings and faults."""

    files: dict[str, bytes]
    url: str = ""
    log: list[Served] = field(default_factory=list)
    cut_at: dict[str, int] = field(default_factory=dict)  # path -> absolute offset to drop the connection
    cuts_left: dict[str, int] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)
    status: dict[str, int] = field(default_factory=dict)
    status_times: dict[str, int] = field(default_factory=dict)  # answer `status` only this often
    head_status: int | None = None  # refuse HEAD like a pre-signed GET URL does
    stall_at: dict[str, int] = field(default_factory=dict)  # path -> offset where the body hangs once
    digests: bool = False  # send Repr-Digest: sha-256 of the true content
    chunk_delay_s: float = 0.0
    sizes: dict[str, int] = field(default_factory=dict)  # listing lies about sizes (disk-full test)
    listings: int = 0  # directory listings served

    def gets(self, path: str) -> list[Served]:
        return [s for s in self.log if s.method == "GET" and s.path == path]

    def listing(self, directory: str) -> list[dict[str, object]]:
        seen: dict[str, dict[str, object]] = {}
        for path, data in self.files.items():
            if not path.startswith(directory):
                continue
            head, _, rest = path[len(directory) :].partition("/")
            if rest:
                seen[head] = {"name": head, "type": "directory", "mtime": "x"}
            else:
                size = self.sizes.get(path, len(data))
                seen[head] = {"name": head, "type": "file", "mtime": "x", "size": size}
        return list(seen.values())

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path in self.status and self.status_times.get(path, 1) > 0:
            if path in self.status_times:
                self.status_times[path] -= 1
            return web.Response(status=self.status[path], text="nope")
        if request.method == "HEAD" and self.head_status is not None:
            return web.Response(status=self.head_status)
        if path.endswith("/"):
            self.listings += 1
            entries = self.listing(path)
            if not entries:
                raise web.HTTPNotFound()
            return web.json_response(entries)
        data = self.files.get(path)
        if data is None:
            raise web.HTTPNotFound()
        headers = {"Accept-Ranges": "bytes", "ETag": f'"{hashlib.md5(data).hexdigest()[:16]}"'}
        if self.digests:
            headers["Repr-Digest"] = f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"
        start, end = 0, len(data)
        rng = request.headers.get("Range")
        if rng:
            first, _, last = rng.removeprefix("bytes=").partition("-")
            start, end = int(first), int(last) + 1
        served = Served(request.method, path, start, end)
        self.log.append(served)
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(data))
            return web.Response(headers=headers)
        resp = web.StreamResponse(status=206 if rng else 200, headers=headers)
        if rng:
            resp.headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        resp.content_length = end - start
        await resp.prepare(request)
        body = bytearray(data[start:end])
        if path in self.corrupt and body:
            body[len(body) // 2] ^= 0xFF
        cut = self.cut_at.get(path)
        pos = start
        while pos < end:
            if self.stall_at.get(path) == pos:
                del self.stall_at[path]
                await asyncio.sleep(30)  # far beyond the client's read timeout
            if pos == cut and self.cuts_left.get(path, 0) > 0:
                self.cuts_left[path] -= 1
                assert request.transport is not None
                request.transport.close()  # mid-body: the client sees a short read
                return resp
            stop = min(end, pos + 64 * KiB)
            for mark in (cut, self.stall_at.get(path)):
                if mark is not None and pos < mark < stop:
                    stop = mark
            await resp.write(bytes(body[pos - start : stop - start]))
            served.sent += stop - pos
            pos = stop
            if self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
        await resp.write_eof()
        return resp


@pytest.fixture
async def file_server() -> AsyncIterator[FileServer]:
    server = FileServer(files={})
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)  # don't wait on a handler a test left stalled
    await runner.setup()
    server.url = await serve_on_free_port(runner)
    yield server
    await runner.cleanup()


@pytest.fixture(params=["aiohttp", "lean"])
def http_client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test through both plain-http clients: aiohttp, and the lean path for large ranges."""
    from runtime.storage.sources import base

    monkeypatch.setattr(base, "FAST_MIN_BYTES", 1 if request.param == "lean" else 1 << 62)
    return str(request.param)


@pytest.fixture
def cache(tmp_path: Path) -> NodeCache:
    return NodeCache(tmp_path / "cache", budget_bytes=1 << 40)


def model_files(prefix: str = "/m/") -> dict[str, bytes]:
    """One large file (ranged), a few small ones in a subfolder, one empty file."""
    rnd = os_random(3 * MiB + 123)
    files = {f"{prefix}big.bin": rnd, f"{prefix}config.json": b'{"a": 1}', f"{prefix}empty.txt": b""}
    for i in range(6):
        files[f"{prefix}tok/part-{i}.bin"] = os_random(1000 + 997 * i)
    return files


def os_random(n: int) -> bytes:
    return os.urandom(n)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime.storage.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def acli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """The CLI as a subprocess without blocking the loop that runs the test servers."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runtime.storage.cli",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, (out + err).decode()


@dataclass
class Moto:
    endpoint: str
    env: dict[str, str]


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    # Port 0: moto binds a free port itself and logs it (" * Running on http://127.0.0.1:PORT").
    # Its log (a line per request) goes to a file: a pipe nobody drains would block it once full.
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    port = wait_for_listening(proc, log_path, r"Running on http://127\.0\.0\.1:(\d+)\s", 60, "moto server")
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    try:
        yield Moto(endpoint, env)
    finally:
        stop_process(proc)


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data))
