"""A GPU model with no free GPU: the pod stays Pending (reported), the request waits out its queue
timeout, nothing is scaled away and re-created; when a GPU node appears the same pod serves."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
from fake_cluster import free_port
from k8s_harness import NS, Harness, eventually
from test_k8s_discovery import activator

from autoscaler.cluster import AutoscalerConfig, ClusterAutoscaler

MS = "serving.zeroserve.io/v1alpha1/modelservices"
LLM = {"runtime": {"kind": "command", "image": "vllm/vllm-openai:v0.6.3", "gpus": 1},
       "scaling": {"initialScale": 0, "stableWindow": "30s"},
       "queue": {"timeout": "2s"}}


def unschedulable(k8s: Harness) -> dict[str, str]:
    for c in ((k8s.get(MS, "llm") or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == "Unschedulable" and c["status"] == "True":
            return dict(c)
    return {}


async def test_pending_gpu_pod_waits_and_is_not_recreated(k8s: Harness, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t\n")
    port = free_port()
    node = ClusterAutoscaler(AutoscalerConfig(
        namespace=NS, image="zeroserve:test", identity="autoscaler-a", address=f"http://127.0.0.1:{port}",
        token_file=token, api_server=k8s.emu.url, api_token="autoscaler-a", host="127.0.0.1", port=port,
        lease_duration_s=2, renew_deadline_s=1.5, retry_period_s=0.25, tick_s=0.25, watch_timeout_s=5))
    await node.start()
    try:
        async with activator(k8s, f"http://127.0.0.1:{port}", token) as act, \
                aiohttp.ClientSession() as session:
            k8s.apply_model("llm", LLM)
            await eventually(lambda: "llm" in act.activator.services and node.autoscaler is not None
                             and k8s.get("apps/v1/deployments", "llm"), what="the model everywhere")
            url = f"http://127.0.0.1:{act.port}/v1/chat/completions"
            body = {"model": "llm", "messages": [{"role": "user", "content": "hi"}]}
            start = time.monotonic()
            async with session.post(url, json=body) as r:
                waited = time.monotonic() - start
                assert r.status == 503 and r.headers.get("Retry-After")
            assert 1.9 <= waited < 6, "the request waited for its queue timeout, no longer"
            cond = await eventually(lambda: unschedulable(k8s), what="the Unschedulable condition")
            assert "Insufficient nvidia.com/gpu" in cond["message"]
            pods = k8s.pods()
            assert len(pods) == 1
            ups = [w.replicas for w in k8s.emu.scale_writes() if w.subresource == "scale"]
            assert ups == [1], "scaled up once on the poke, never down and up again"

            k8s.cluster.set_gpus(1)  # a GPU node joins (cluster autoscaler)
            await eventually(lambda: act.table.get("llm").ready, what="the pending pod to serve")
            assert [p["metadata"]["uid"] for p in k8s.pods()] == [pods[0]["metadata"]["uid"]]
            async with session.post(f"http://127.0.0.1:{act.port}/v2/models/llm/infer",
                                    json={"inputs": []}) as r:
                assert r.status == 200
            await eventually(lambda: not unschedulable(k8s), what="the condition to clear")
            async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
                assert 'zeroserve_desired_replicas{model="llm"} 1.0' in await r.text()
            status = node.backend.status()
            assert status["llm"]["desired"] == 1 and status["llm"]["ready"] == 1
            async with session.get(f"http://127.0.0.1:{port}/status") as r:
                body = await r.json()
            assert body["leader"] and body["models"]["llm"]["desired"] == 1
            assert body["autoscaler"]["models"]["llm"]["desired"] == 1
    finally:
        await node.stop()
