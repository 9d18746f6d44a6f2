"""examples/external: the stand-in external server and the external-runtime ModelService specs."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from runtime_server_proc import REPO

from zeroserve.spec import load_specs

EXTERNAL = REPO / "examples" / "external"


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    log = tmp_path / "standin.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(EXTERNAL / "standin_server.py"),
                "--port",
                "0",
                "--model-name",
                "m",
                "--replica-id",
                "r7",
                "--startup-delay-s",
                "2",  # long enough that the test sees the 503 however late it gets to ask
            ],
            stderr=out,
        )
    deadline = time.monotonic() + 15
    while not (match := re.search(r"listening on (http://\S+) ", log.read_text())):
        assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
        time.sleep(0.01)
    yield proc, match.group(1)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


async def test_standin_speaks_v2_and_drains(standin: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, url = standin
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/v2/health/live") as r:
            assert r.status == 200
        async with s.get(url + "/v2/health/ready") as r:
            assert r.status == 503  # still in its startup delay
        deadline = time.monotonic() + 15
        while True:
            async with s.get(url + "/v2/models/m/ready") as r:
                if r.status == 200:
                    break
            assert time.monotonic() < deadline, "the stand-in never became ready"
            await asyncio.sleep(0.01)
        body = {"id": "q", "inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2.5]}]}
        async with s.post(url + "/v2/models/m/infer", json=body) as r:
            assert r.status == 200 and r.headers["X-Served-By"] == "r7"
            out = await r.json()
        assert out["outputs"][0]["data"] == [2.0, 5.0] and out["id"] == "q"
        async with s.post(url + "/v2/models/other/infer", json=body) as r:
            assert r.status == 404
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0


@pytest.mark.parametrize("name", ["vllm", "triton", "kserve", "standin"])
def test_external_specs_are_valid(name: str) -> None:
    (svc,) = load_specs(EXTERNAL / f"{name}.yaml")
    assert svc.runtime.kind == "command" and svc.runtime.command
    assert svc.runtime.readiness_path.startswith("/")
    assert svc.runtime.protocol == {"vllm": "openai", "kserve": "v1"}.get(name, "v2")
