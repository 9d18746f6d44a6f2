"""`zeroserve up` end to end: real activator, autoscaler, local backend and replica processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ROOT
from tests.e2e.harness import Up, pid_alive

FAST_SPEC = """
apiVersion: serving.zeroserve.io/v1alpha1
kind: ModelService
metadata: {name: iris}
spec:
  runtime: {model: iris}
  scaling: {target: 10, initialScale: 0, stableWindow: 2s, scaleToZeroGracePeriod: 1s, tickInterval: 0.5s}
---
apiVersion: serving.zeroserve.io/v1alpha1
kind: ModelService
metadata: {name: tiny-llm}
spec:
  runtime: {model: tiny-llm, loadTime: 1s, tokenLatency: 5ms}
  scaling: {target: 10, maxReplicas: 3, initialScale: 0, stableWindow: 2s, scaleToZeroGracePeriod: 1s,
            tickInterval: 0.5s}
"""


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    spec = tmp_path_factory.mktemp("up") / "spec.yaml"
    spec.write_text(FAST_SPEC)
    server = Up(spec)
    try:
        server.wait_up()
        yield server
    finally:
        code = server.stop()
        assert code == 0, server.output()


def _ready(model: str, n: int) -> object:
    return lambda s: s["models"][model]["ready"] == n


async def test_cold_iris_predict_then_warm(up: Up) -> None:
    # At zero however the module's tests were ordered (an earlier iris request scales it up).
    up.wait_for(lambda st: st["models"]["iris"]["ready"] == 0 and not st["models"]["iris"]["replicas"],
                30, "iris at zero")
    async with aiohttp.ClientSession() as s:
        async with s.post(up.url + "/v1/models/iris:predict",
                          json={"instances": [[5.1, 3.5, 1.4, 0.2]]}) as r:
            assert r.status == 200, await r.text()
            assert r.headers["X-Zeroserve-Cold-Start"] == "true"
            assert "queue;dur=" in r.headers["Server-Timing"]
            assert (await r.json())["predictions"] == [0]
        async with s.post(up.url + "/v1/models/iris:predict",
                          json={"instances": [[6.7, 3.0, 5.2, 2.3]]}) as r:
            assert r.status == 200
            assert "X-Zeroserve-Cold-Start" not in r.headers
            assert (await r.json())["predictions"] == [2]


async def test_burst_of_50_from_zero_loses_nothing(up: Up) -> None:
    up.wait_for(_ready("tiny-llm", 0), 30, "tiny-llm at zero")
    async with aiohttp.ClientSession() as s:
        async def one(i: int) -> int:
            async with s.post(up.url + "/v1/completions",
                              json={"model": "tiny-llm", "prompt": f"r{i}", "max_tokens": 4}) as r:
                await r.read()
                return r.status

        codes = await asyncio.gather(*[one(i) for i in range(50)])
    assert codes == [200] * 50


async def test_unknown_model_is_404_json(up: Up) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(up.url + "/v1/models/nope:predict", json={"instances": []}) as r:
            assert r.status == 404
            assert "nope" in (await r.json())["error"]


async def test_admin_serves_the_autoscaler_api(up: Up) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(up.admin + "/v1/status") as r:
            assert r.status == 200
            assert set((await r.json())["models"]) == {"iris", "tiny-llm"}
        async with s.get(up.admin + "/v1/status/iris") as r:
            assert r.status == 200
            assert (await r.json())["policy"] == "kpa"
        async with s.get(up.admin + "/v1/status/nope") as r:
            assert r.status == 404


async def test_idle_model_returns_to_zero_and_cold_starts_again(up: Up) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(up.url + "/v2/models/iris/ready") as r:
            assert r.status == 200
    status = up.wait_for(_ready("iris", 1), 10, "iris ready")
    pids = [r["pid"] for r in status["models"]["iris"]["replicas"]]
    assert pids and all(pid_alive(p) for p in pids)
    # stable window 2 s + grace 1 s, plus ticks: well under 15 s.
    up.wait_for(lambda st: st["models"]["iris"]["ready"] == 0
                and not st["models"]["iris"]["replicas"], 15, "iris back at zero")
    assert not any(pid_alive(p) for p in pids)
    async with aiohttp.ClientSession() as s:
        async with s.post(up.url + "/v2/models/iris/infer", json={"inputs": [
                {"name": "input-0", "shape": [1, 4], "datatype": "FP32",
                 "data": [5.1, 3.5, 1.4, 0.2]}]}) as r:
            assert r.status == 200, await r.text()
            assert r.headers["X-Zeroserve-Cold-Start"] == "true"


def test_metrics_and_status_command(up: Up) -> None:
    import urllib.request

    # Its own iris request, so the counters below exist however the module's tests are run.
    req = urllib.request.Request(up.url + "/v1/models/iris:predict",
                                 data=b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}', method="POST")
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 200
    out = subprocess.run([sys.executable, "-m", "zeroserve", "status", "--admin", up.admin],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split()[:3] == ["MODEL", "DESIRED", "READY"]
    assert any(line.startswith("iris") for line in out.stdout.splitlines())
    # The fast path adds its counts to the registry on a period, not per request: poll for them.
    deadline = time.monotonic() + 10
    while True:
        with urllib.request.urlopen(up.admin + "/metrics", timeout=5) as r:
            text = r.read().decode()
        if 'zeroserve_requests_total{code="200",model="iris"}' in text or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert 'zeroserve_requests_total{code="200",model="iris"}' in text
    assert "zeroserve_cold_start_seconds_bucket" in text


def test_invalid_spec_is_a_clear_error_and_exit_2(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("kind: ModelService\nmetadata: {name: x}\n"
                    "spec: {runtime: {model: iris}, scaling: {target: -1, maxReplicas: lots}}\n")
    out = subprocess.run([sys.executable, "-m", "zeroserve", "up", "-f", str(spec)],
                         capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 2
    assert "spec.scaling.target = -1, must be > 0" in out.stderr
    assert "spec.scaling.maxReplicas = lots, must be an integer" in out.stderr
    assert "Traceback" not in out.stderr


def test_validate_command(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "zeroserve", "validate",
                          str(ROOT / "examples" / "quickstart.yaml")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "ok (iris, tiny-llm)" in out.stdout
