"""End to end against the emulator: two autoscaler processes (leader election), an activator, and
replica processes started by the fake kubelet.

ModelService -> Deployment at initial scale -> requests answered through the activator -> idle ->
0 replicas -> a request scales it from zero and is answered; then the leader is killed, the other
autoscaler takes over within the lease duration and does the same, and the emulator's audit log
shows that the two never both wrote replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from fake_cluster import container_launcher, free_port
from k8s_harness import NS, ROOT, Harness, eventually, load_roles
from test_k8s_discovery import activator

LEASE_S, RENEW_S, RETRY_S = 2.0, 1.5, 0.25
QUEUE_TIMEOUT_S = 30
# Deadline for waits that include starting Python processes (an autoscaler; a pod's storage-init
# and runtime): each took up to 15 s of imports alone on an overloaded 2-core machine.
STARTUP_S = 60.0
MS = "serving.zeroserve.io/v1alpha1/modelservices"
SPEC = {"runtime": {"model": "iris"},
        "scaling": {"initialScale": 1, "stableWindow": "1s", "scaleToZeroGracePeriod": "500ms",
                    "target": 1},
        "queue": {"timeout": f"{QUEUE_TIMEOUT_S}s"}}


@contextlib.asynccontextmanager
async def model_store(folder: Path) -> AsyncIterator[tuple[str, list[str]]]:
    """An HTTP object store holding iris weights retrained to say "virginica" (2) for everything,
    so an answer of 2 proves the replica loaded what storage-init fetched, not the shipped copy."""
    with np.load(ROOT / "examples" / "iris" / "iris.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["bias"] = np.array([0.0, 0.0, 1000.0], dtype=arrays["bias"].dtype)
    np.savez(folder / "iris.npz", **arrays)
    data = (folder / "iris.npz").read_bytes()
    gets: list[str] = []

    async def weights(request: web.Request) -> web.Response:
        if request.method == "GET":
            gets.append(request.headers.get("Range", "all"))
        return web.Response(body=data, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/models/iris/iris.npz", weights)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/models/iris/iris.npz", gets
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def autoscaler_process(k8s: Harness, name: str, port: int,
                             token: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    argv = [sys.executable, "-m", "zeroserve", "autoscaler", "--api-server", k8s.emu.url,
            "--api-token", name, "--namespace", NS, "--image", "zeroserve:test", "--identity", name,
            "--host", "127.0.0.1", "--port", str(port), "--address", f"http://127.0.0.1:{port}",
            "--token-file", str(token), "--lease-duration-s", str(LEASE_S),
            "--renew-deadline-s", str(RENEW_S), "--retry-period-s", str(RETRY_S), "--tick-s", "0.25"]
    proc = await asyncio.create_subprocess_exec(*argv, cwd=ROOT,
                                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        yield proc
    finally:
        if proc.returncode is None:
            # Waited for asynchronously: the emulator shares this event loop, and the autoscaler's
            # shutdown releases its lease through it.
            proc.send_signal(signal.SIGTERM)
            try:
                # Shutdown releases the lease and closes watches: seconds on an overloaded machine.
                assert await asyncio.wait_for(proc.wait(), 30) == 0, "a clean exit on SIGTERM"
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()


def holder(k8s: Harness) -> str:
    lease = k8s.get("coordination.k8s.io/v1/leases", "zeroserve-autoscaler") or {}
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def replicas(k8s: Harness) -> int:
    deploy = k8s.get("apps/v1/deployments", "iris") or {}
    return int((deploy.get("spec") or {}).get("replicas", -1))


async def infer(session: aiohttp.ClientSession, port: int) -> tuple[int, dict[str, Any], float]:
    start = time.monotonic()
    async with session.post(f"http://127.0.0.1:{port}/v2/models/iris/infer",
                            json={"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32",
                                              "data": [6.8, 2.8, 4.8, 1.4]}]}) as r:
        body = await r.json()
        if r.status == 200:  # the fetched weights answer 2 (the shipped ones would say 1)
            assert body["outputs"][0]["data"] == [2], body
        return r.status, dict(r.headers), time.monotonic() - start


async def scale_to_zero_and_back(k8s: Harness, session: aiohttp.ClientSession, port: int,
                                 writer: str) -> None:
    await eventually(lambda: replicas(k8s) == 0 and not k8s.pods(), timeout_s=STARTUP_S,
                     what=f"{writer} to scale the idle model to zero")
    status, headers, took = await infer(session, port)
    assert status == 200, "a request at zero is queued, scales from zero and is answered"
    assert headers.get("X-Zeroserve-Cold-Start") == "true"
    assert replicas(k8s) >= 1
    scale_ups = [w for w in k8s.emu.scale_writes() if w.subresource == "scale" and w.replicas]
    assert scale_ups[-1].identity == writer
    # Two process starts (storage-init, the runtime) took up to 16 s on an overloaded machine; the
    # promise is an answer within the queue timeout (a 20 s bound here was a guess).
    assert took < QUEUE_TIMEOUT_S
    print(f"\n{writer}: request at zero answered in {took:.2f}s (queue + scale + start + ready)",
          file=sys.stderr)


@pytest.mark.timeout(300)  # ~10 s here; over 100 s on an overloaded 2-core machine
async def test_scale_to_zero_from_zero_and_leader_failover(k8s: Harness, tmp_path: Path) -> None:
    # The kubelet runs each pod's containers as the controller rendered them: `zeroserve
    # storage-init` through the node cache, then the real `zeroserve serve --model iris` server.
    k8s.cluster.launcher = container_launcher(tmp_path / "pods")
    token = tmp_path / "token"
    token.write_text("stats-token\n")
    k8s.store.create("v1/configmaps", NS, {"metadata": {"name": "zeroserve-prefetch"},
                                           "data": {"uris": ""}})
    port_a, port_b = free_port(), free_port()
    async with model_store(tmp_path) as (uri, downloads), \
            autoscaler_process(k8s, "autoscaler-a", port_a, token) as proc_a:
        spec = {**SPEC, "storageUri": uri}
        await eventually(lambda: holder(k8s) == "autoscaler-a", timeout_s=STARTUP_S, what="a to lead")
        async with autoscaler_process(k8s, "autoscaler-b", port_b, token):
            # The activator reports to b, a follower: b redirects it to the leader.
            async with activator(k8s, f"http://127.0.0.1:{port_b}", token) as act, \
                    aiohttp.ClientSession() as session:
                k8s.apply_model("iris", spec)
                await eventually(lambda: replicas(k8s) == 1, what="the deployment at initial scale")
                await eventually(lambda: act.table.get("iris").ready, timeout_s=STARTUP_S,
                                 what="a ready pod")
                status, _, _ = await infer(session, act.port)
                assert status == 200
                await scale_to_zero_and_back(k8s, session, act.port, "autoscaler-a")
                # b sent the activator to the leader. Polled: the sink forgets the leader after any
                # failed report, and on an overloaded machine the leader itself answers 503 while a
                # renewal is late (is_leader() past its renew deadline); the next report re-learns it.
                await eventually(lambda: act.sink.leader_url == f"http://127.0.0.1:{port_a}",
                                 what="the activator to report to the leader")

                proc_a.send_signal(signal.SIGKILL)  # the leader dies without releasing the lease
                killed_at = k8s.emu.clock()
                await proc_a.wait()
                await eventually(lambda: holder(k8s) == "autoscaler-b", timeout_s=LEASE_S + 5,
                                 what="b to take over")
                takeover_s = k8s.emu.clock() - killed_at
                assert takeover_s <= LEASE_S + 2 * RETRY_S + 1.0, takeover_s
                print(f"\ntakeover {takeover_s:.2f}s after SIGKILL (lease {LEASE_S}s)", file=sys.stderr)

                await scale_to_zero_and_back(k8s, session, act.port, "autoscaler-b")
                status, _, _ = await infer(session, act.port)
                assert status == 200
                # A spec change reaches the Deployment through the new leader.
                k8s.apply_model("iris", {**spec, "runtime": {"model": "iris", "env": [
                    {"name": "LOG_LEVEL", "value": "debug"}]}})
                await eventually(lambda: "LOG_LEVEL" in str(k8s.get("apps/v1/deployments", "iris")),
                                 what="the template patch")

    writes = [w for w in k8s.emu.writes if w.resource == "apps/v1/deployments"]
    a = [w.at_s for w in writes if w.identity == "autoscaler-a"]
    b = [w.at_s for w in writes if w.identity == "autoscaler-b"]
    assert a and b and max(a) < killed_at < min(b), "replicas were never written by both"
    assert {w.identity for w in writes} == {"autoscaler-a", "autoscaler-b"}
    # Least privilege, exactly: every verb each Role grants was needed by this run (and the
    # fixture checks that nothing outside the Roles was asked for).
    roles = load_roles()
    for component in ("autoscaler", "activator"):
        granted = {(g, r, v) for rule in roles[f"zeroserve-{component}"]["rules"]
                   for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
        used = {(a.group, a.resource, a.verb) for a in k8s.emu.accesses
                if a.identity.startswith(component)}
        assert granted == used, (component, granted ^ used)
    prefetch = k8s.get("v1/configmaps", "zeroserve-prefetch") or {}
    assert prefetch["data"]["uris"] == uri + "\n"
    # Every pod ran storage-init through the node's cache: one download served all its starts.
    assert len(k8s.cluster.started_pods) >= 3
    assert downloads == ["all"], downloads
    assert len(list((tmp_path / "pods" / "node" / "var/cache/zeroserve/entries").iterdir())) == 1
    ms = k8s.get(MS, "iris") or {}
    assert ms["status"]["lastColdStartSeconds"] > 0
