"""SIGTERM drain: readiness drops, new work is refused, in-flight work finishes, exit 0."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from runtime_server_proc import REPO, start_server

from runtime.server.tiny_llm import pseudo_text

# A prompt whose synthetic completion is long enough that max_tokens, not the text, ends it.
PROMPT = next(p for p in (f"drain {i}" for i in range(100)) if len(pseudo_text(p, None, 100)) >= 30)


async def test_sigterm_lets_the_inflight_stream_finish(tmp_path: Path) -> None:
    server = start_server(
        tmp_path,
        "--model",
        "tiny-llm",
        "--load-time-s",
        "0",
        "--token-latency-s",
        "0.1",  # a 3 s stream: the checks below must all happen while it is still going
        "--drain-grace-s",
        "20",
    )
    body = {"model": "tiny-llm", "prompt": PROMPT, "max_tokens": 30, "stream": True}
    async with aiohttp.ClientSession() as s, s.post(server.url + "/v1/completions", json=body) as stream:
        assert stream.status == 200
        first = await stream.content.readline()
        assert first.startswith(b"data: ")
        server.proc.send_signal(signal.SIGTERM)
        sent_at = time.monotonic()

        # Readiness turns 503 while the stream is still going; liveness stays up.
        for _ in range(200):
            if await asyncio.to_thread(server.status, "/v2/health/ready") == 503:
                break
            await asyncio.sleep(0.01)
        assert await asyncio.to_thread(server.status, "/v2/health/ready") == 503
        async with aiohttp.ClientSession() as other:
            late = {"model": "tiny-llm", "prompt": "late", "max_tokens": 2}
            async with other.post(server.url + "/v1/completions", json=late) as r:
                assert r.status == 503
                assert r.headers.get("Connection", "").lower() == "close"
                assert (await r.json())["error"]["code"] == "draining"
        assert server.proc.poll() is None

        rest = (await stream.read()).decode()
    events = [e for e in (first.decode() + rest).split("\n\n") if e.strip()]
    assert events[-1] == "data: [DONE]"
    assert len(events) == 30 + 1 + 1  # every token, the finish chunk, [DONE]
    assert '"finish_reason":"length"' in events[-2]
    assert await asyncio.to_thread(server.proc.wait, 10) == 0
    # It waited for the stream, not the other way round (29 tokens were left at SIGTERM; the margin
    # covers a client that read the first token late while the server went on generating).
    assert time.monotonic() - sent_at >= 0.1 * 15
    assert "draining model=tiny-llm in_flight=1" in server.log()


async def test_grace_bounds_the_drain(tmp_path: Path) -> None:
    server = start_server(
        tmp_path,
        "--model",
        "tiny-llm",
        "--load-time-s",
        "0",
        "--token-latency-s",
        "0.3",  # a 9 s stream, far longer than the grace
        "--drain-grace-s",
        "0.3",
    )
    body = {"model": "tiny-llm", "prompt": PROMPT, "max_tokens": 30, "stream": True}
    async with aiohttp.ClientSession() as s, s.post(server.url + "/v1/completions", json=body) as stream:
        await stream.content.readline()
        server.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert await asyncio.to_thread(server.proc.wait, 10) == 0
        assert time.monotonic() - started < 0.3 * 30 / 2  # did not wait for the 9 s stream
    assert "drain grace over with 1 requests in flight" in server.log()


async def test_sigterm_during_load_exits_0(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--model", "tiny-llm", "--load-time-s", "30", ready=False)
    assert server.status("/v2/health/ready") == 503
    assert await asyncio.to_thread(server.stop, 10) == 0


async def test_client_disconnect_mid_stream_frees_the_slot(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--model", "tiny-llm", "--load-time-s", "0", "--token-latency-s", "0.3")
    body = {"model": "tiny-llm", "prompt": PROMPT, "max_tokens": 30, "stream": True}
    stats_url = server.url + "/v2/models/tiny-llm/stats"
    async with aiohttp.ClientSession() as s:
        async with s.post(server.url + "/v1/completions", json=body) as stream:
            await stream.content.readline()
            async with s.get(stats_url) as r:
                assert (await r.json())["inference"]["in_flight"] == 1
            stream.close()  # hang up 0.3 s into a 9 s stream
        closed_at = time.monotonic()
        while time.monotonic() - closed_at < 6.0:
            async with s.get(stats_url) as r:
                if (await r.json())["inference"]["in_flight"] == 0:
                    break
            await asyncio.sleep(0.02)
        assert time.monotonic() - closed_at < 6.0, "the server kept generating for a client that left"
    assert "client went away mid-stream" in server.log()
    assert await asyncio.to_thread(server.stop) == 0


def test_sigterm_right_after_listening_is_logged_drains() -> None:
    # A SIGTERM sent the moment "listening on" appears (a backend stopping a replica it just saw
    # start) used to land before the server's handlers were installed: killed with -15, no drain.
    helper = Path(__file__).with_name("sigterm_on_listening.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    args = ["runtime.server.app", "runtime.server.cli", "--port", "0", "--model", "tiny-llm"]
    proc = subprocess.run(
        [sys.executable, str(helper), *args, "--load-time-s", "30"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "listening on" in proc.stderr and "draining model=tiny-llm" in proc.stderr
