"""A warm pool process (a real subprocess) takes a model via /pool/load: a cold start without the
process start, then a scale to zero that parks the weights and a second start from parked memory."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

pytest.importorskip("torch")
pytest.importorskip("openai")

import openai

from runtime import pool
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
POOL_COMMAND = [sys.executable, "-m", "runtime.pool"]


@pytest.fixture(scope="module")
def pool_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """One pool process for the module (its warm-up is the slow part); each test leaves it idle."""
    tmp_path = tmp_path_factory.mktemp("pool")
    port = free_port()
    log = (tmp_path / "pool.log").open("wb")
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen([*POOL_COMMAND, "--port", str(port), "--park-budget-bytes", str(10 << 20)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        print((tmp_path / "pool.log").read_text()[-3000:])


def _link_and_copy(src: Path, linked: Path, copied: Path) -> None:
    linked.mkdir()
    copied.mkdir()
    for f in src.iterdir():
        os.link(f, linked / f.name)
        shutil.copy(f, copied / f.name)


async def _http_status(port: int, path: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status


async def _first_streamed_token(port: int) -> str:
    async with openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0) as c:
        stream = await c.completions.create(model="tiny", prompt="cold", max_tokens=4, temperature=0,
                                            stream=True)
        text = ""
        async for chunk in stream:
            text += "".join(ch.text for ch in chunk.choices)
        return text


async def test_cold_start_through_the_pool_then_parked(pool_port: int, tiny_llama: Path,
                                                       tmp_path: Path) -> None:
    port = pool_port
    # Liveness answers while the process is still importing torch (generous: a loaded machine).
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        try:
            assert await _http_status(port, "/v2/health/live") == 200
            break
        except aiohttp.ClientError:
            assert asyncio.get_running_loop().time() < deadline, "pool process never listened"
            await asyncio.sleep(0.05)
    st = await pool.wait_ready("127.0.0.1", port, timeout_s=120)   # torch import: slow when loaded
    assert st.state == "idle", st.raw
    assert st.raw["warm_s"] > 0 and st.rss_bytes > 0
    assert await _http_status(port, "/v2/health/ready") == 503       # no model yet
    assert "tiny" not in st.parked

    first = await pool.load("127.0.0.1", port, tiny_llama, "tiny")
    assert first.source == "disk" and first.bytes_loaded > 0
    assert first.load_s > 0 and set(first.phases_s) >= {"read", "build", "install", "load"}
    assert await _http_status(port, "/v2/health/ready") == 200
    text = await _first_streamed_token(port)
    st = await pool.status("127.0.0.1", port)
    assert st.state == "serving" and st.model_name == "tiny"
    assert st.raw["last_load"]["first_token_s"] > 0

    with pytest.raises(pool.PoolError) as busy:                        # one model per process
        await pool.load("127.0.0.1", port, tiny_llama, "tiny")
    assert busy.value.status == 409

    unloaded = await pool.unload("127.0.0.1", port, park=True)
    assert unloaded["parked"] is True
    st = await pool.status("127.0.0.1", port)
    assert st.state == "idle" and st.parked == ("tiny",)
    assert 0 < st.raw["park"]["used_bytes"] <= st.raw["park"]["budget_bytes"]
    assert await _http_status(port, "/v2/health/ready") == 503
    assert pool.choose({"p1": st}, "tiny") == "p1"

    second = await pool.load("127.0.0.1", port, tiny_llama, "tiny")
    assert second.source == "parked" and second.bytes_loaded == first.bytes_loaded
    assert await _first_streamed_token(port) == text                   # same weights, same greedy text
    assert (await pool.unload("127.0.0.1", port, park=False))["parked"] is True   # still parked

    # The backend gives each replica its own directory of hard links into the node cache: same files,
    # same parked weights. A copy (a new version, to the loader) is read from disk again.
    linked, copied = tmp_path / "linked", tmp_path / "copied"
    _link_and_copy(tiny_llama, linked, copied)
    assert (await pool.load("127.0.0.1", port, linked, "tiny")).source == "parked"
    await pool.unload("127.0.0.1", port, park=True)
    assert (await pool.load("127.0.0.1", port, copied, "tiny")).source == "disk"
    await pool.unload("127.0.0.1", port, park=False)


async def test_bad_requests_leave_the_process_usable(pool_port: int, tmp_path: Path) -> None:
    await pool.wait_ready("127.0.0.1", pool_port, timeout_s=60)
    with pytest.raises(pool.PoolError) as missing:
        await pool.load("127.0.0.1", pool_port, tmp_path / "nope", "x")
    assert missing.value.status == 404
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(pool.PoolError) as broken:
        await pool.load("127.0.0.1", pool_port, empty, "x")
    assert broken.value.status == 500
    with pytest.raises(pool.PoolError) as nothing:
        await pool.unload("127.0.0.1", pool_port, park=False)
    assert nothing.value.status == 409
    assert (await pool.status("127.0.0.1", pool_port)).state == "idle"


def test_choose_prefers_parked_then_empty_idle() -> None:
    def st(state: str, parked: tuple[str, ...] = ()) -> pool.PoolStatus:
        return pool.PoolStatus(state, None, parked, 0, {})

    statuses = {"a": st("serving"), "b": st("idle", ("other",)), "c": st("idle"), "d": st("idle", ("m",))}
    assert pool.choose(statuses, "m") == "d"
    assert pool.choose(statuses, "n") == "c"
    assert pool.choose({"b": st("idle", ("other",))}, "n") == "b"
    assert pool.choose({"a": st("warming")}, "n") is None


def _env_with_slow_torch(tmp_path: Path) -> dict[str, str]:
    """A stand-in torch that takes 30 s to import: the warm-up outlasts any reasonable stop."""
    slow = tmp_path / "slow" / "torch"
    slow.mkdir(parents=True)
    (slow / "__init__.py").write_text("import time\ntime.sleep(30)\nraise ImportError('stand-in torch')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(slow.parent), str(REPO)]),
            "CUDA_VISIBLE_DEVICES": ""}


def test_sigterm_while_warming_exits_promptly(tmp_path: Path) -> None:
    """A pool process told to stop while it warms up must not first finish warming: the backend's
    close() waits up to 10 s for it, then SIGKILLs. A stand-in torch that takes 30 s to import
    makes the warm-up outlast any reasonable stop, on any machine."""
    log_path = tmp_path / "pool.log"
    env = _env_with_slow_torch(tmp_path)
    with log_path.open("wb") as log:
        proc = subprocess.Popen([*POOL_COMMAND, "--port", "0"], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "(warming)" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(5)
        except subprocess.TimeoutExpired:
            pytest.fail("still running 5 s after SIGTERM: it waits for the warm-up thread")
        assert code == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_right_after_listening_is_logged_drains(tmp_path: Path) -> None:
    """A SIGTERM sent the moment the pool process logs "listening on" (the test above, or the pool
    backend, may send one then) used to arrive before its handlers: killed with -15, no drain."""
    helper = REPO / "tests" / "runtime" / "sigterm_on_listening.py"
    proc = subprocess.run([sys.executable, str(helper), "runtime.pool_server", "runtime.pool", "--port", "0"],
                          cwd=REPO, env=_env_with_slow_torch(tmp_path), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "(warming)" in proc.stderr
