"""The Kubernetes backend against the API emulator, whose kubelet runs real replica processes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from emulator import ApiError
from k8s_harness import NS, Harness, eventually

from autoscaler.backends.base import EndpointSet
from autoscaler.backends.k8s_render import RenderConfig
from autoscaler.backends.kubernetes import KubernetesBackend, KubernetesConfig
from autoscaler.backends.kubernetes_api import KubeApi, configuration

IRIS = {"runtime": {"model": "iris"}, "scaling": {"initialScale": 1}}
DEPLOY = "apps/v1/deployments"
MS = "serving.zeroserve.io/v1alpha1/modelservices"


@contextlib.asynccontextmanager
async def backend(k8s: Harness, identity: str = "autoscaler-a",
                  is_leader: Callable[[], bool] = lambda: True) -> AsyncIterator[KubernetesBackend]:
    api = KubeApi(configuration(k8s.emu.url, token=identity))
    b = KubernetesBackend(api, KubernetesConfig(NS, RenderConfig(image="zeroserve:test"),
                                                watch_timeout_s=5), is_leader=is_leader)
    await b.start()
    try:
        yield b
    finally:
        await b.close()
        await api.close()


def condition(obj: dict[str, object] | None, kind: str) -> dict[str, str]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:  # type: ignore[attr-defined]
        if c["type"] == kind:
            return dict(c)
    return {}


async def test_model_service_becomes_a_serving_deployment(k8s: Harness) -> None:
    seen: list[EndpointSet] = []
    async with backend(k8s) as b:
        b.subscribe(lambda model, eps: seen.append(eps))
        ms = k8s.apply_model("iris", IRIS)
        deploy = await eventually(lambda: k8s.get(DEPLOY, "iris"), what="deployment")
        assert deploy["spec"]["replicas"] == 1
        assert deploy["metadata"]["ownerReferences"][0]["uid"] == ms["metadata"]["uid"]
        assert deploy["spec"]["progressDeadlineSeconds"] >= 3600
        await eventually(lambda: b.ready_replicas("iris") == 1, what="a ready replica")
        ep = b.endpoints("iris").ready[0]
        async with aiohttp.ClientSession() as s, s.post(f"{ep.url}/v2/models/iris/infer", json={}) as r:
            assert r.status == 200
        assert seen and seen[-1].ready == (ep,)
        assert k8s.get("v1/services", "iris") is not None
        await eventually(lambda: condition(k8s.get(MS, "iris"), "Ready").get("reason") == "Serving")
        assert k8s.get(MS, "iris")["status"]["readyReplicas"] == 1


async def test_scale_to_zero_and_back_records_a_cold_start(k8s: Harness) -> None:
    async with backend(k8s) as b:
        k8s.apply_model("iris", IRIS)
        await eventually(lambda: b.ready_replicas("iris") == 1)
        await b.scale("iris", 0)
        await eventually(lambda: not k8s.pods(), what="pods gone")
        await eventually(lambda: condition(k8s.get(MS, "iris"), "ScaledToZero").get("status") == "True")
        assert b.ready_replicas("iris") == 0
        await b.scale("iris", 1)
        await b.scale("iris", 1)  # the same count again is not another write
        await eventually(lambda: b.ready_replicas("iris") == 1)
        status = await eventually(lambda: (k8s.get(MS, "iris") or {}).get("status", {}).get(
            "lastColdStartSeconds") and k8s.get(MS, "iris")["status"])
        assert 0 < status["lastColdStartSeconds"] < 10
        writes = [(w.identity, w.replicas) for w in k8s.emu.scale_writes() if w.subresource == "scale"]
        assert writes == [("autoscaler-a", 0), ("autoscaler-a", 1)]
        # Replicas are never written except through the scale subresource after creation.
        others = [w for w in k8s.emu.writes if w.resource == DEPLOY and w.replicas is not None
                  and w.subresource != "scale" and w.verb != "create"]
        assert others == []


async def test_a_scale_during_the_deployment_create_is_not_lost(k8s: Harness) -> None:
    k8s.emu.latency_s[("create", "deployments")] = 0.5
    async with backend(k8s) as b:
        k8s.apply_model("iris", {**IRIS, "scaling": {"initialScale": 0}})
        await eventually(lambda: any(a.verb == "create" and a.resource == "deployments"
                                     for a in k8s.emu.accesses), what="the create in flight")
        await b.scale("iris", 1)  # the autoscaler's first decision races the create
        await eventually(lambda: b.ready_replicas("iris") == 1, what="the replica asked for")


async def test_a_follower_writes_nothing(k8s: Harness) -> None:
    async with backend(k8s, "autoscaler-b", is_leader=lambda: False) as b:
        k8s.apply_model("iris", IRIS)
        await eventually(lambda: "iris" in b.models)
        await b.scale("iris", 3)
        await b.prefetch("iris")
        assert k8s.get(DEPLOY, "iris") is None
        assert [w for w in k8s.emu.writes if w.identity == "autoscaler-b"] == []


async def test_watches_relist_after_410_gone(k8s: Harness) -> None:
    async with backend(k8s) as b:
        k8s.apply_model("iris", {**IRIS, "scaling": {"initialScale": 0}})
        await eventually(lambda: k8s.get(DEPLOY, "iris"))
        lists = b.pods.lists
        k8s.expire_all_watches()
        await eventually(lambda: b.pods.lists > lists, what="a re-list")
        await b.scale("iris", 1)
        await eventually(lambda: b.ready_replicas("iris") == 1, what="the pod seen after re-list")
        k8s.store.expire_watches()  # a plain timeout resumes without listing
        lists = b.pods.lists
        await b.scale("iris", 0)
        await eventually(lambda: b.ready_replicas("iris") == 0)
        assert b.pods.lists == lists


async def test_pending_gpu_pod_is_reported_and_left_to_wait(k8s: Harness) -> None:
    llm = {"runtime": {"kind": "command", "image": "vllm/vllm-openai:v0.6.3", "gpus": 1,
                       "readinessPath": "/v2/health/ready"},
           "scaling": {"initialScale": 0}}
    async with backend(k8s) as b:
        k8s.apply_model("llm", llm)
        await eventually(lambda: k8s.get(DEPLOY, "llm"))
        await b.scale("llm", 1)
        cond = await eventually(lambda: condition(k8s.get(MS, "llm"), "Unschedulable").get(
            "status") == "True" and condition(k8s.get(MS, "llm"), "Unschedulable"))
        assert "Insufficient nvidia.com/gpu" in cond["message"]
        assert condition(k8s.get(MS, "llm"), "Ready")["reason"] == "Unschedulable"
        pod_uid = k8s.pods()[0]["metadata"]["uid"]
        for _ in range(3):  # the autoscaler keeps asking for one replica while requests wait
            await b.scale("llm", 1)
        assert [p["metadata"]["uid"] for p in k8s.pods()] == [pod_uid]
        assert [w.replicas for w in k8s.emu.scale_writes() if w.subresource == "scale"] == [1]
        k8s.cluster.set_gpus(1)  # a node with a GPU joins: the same pod is scheduled and serves
        await eventually(lambda: b.ready_replicas("llm") == 1, what="the pending pod to serve")
        assert [p["metadata"]["uid"] for p in k8s.pods()] == [pod_uid]
        await eventually(lambda: condition(k8s.get(MS, "llm"), "Unschedulable").get("status") == "False")


async def test_adopts_an_existing_deployment_through_scale_target_ref(k8s: Harness) -> None:
    template = {"metadata": {"labels": {"app": "legacy"}},
                "spec": {"containers": [{"name": "server", "image": "legacy:1",
                                         "ports": [{"containerPort": 9000}],
                                         "readinessProbe": {"httpGet": {"path": "/v2/health/ready",
                                                                        "port": 9000}}}]}}
    k8s.store.create(DEPLOY, NS, {"metadata": {"name": "legacy"},
                                  "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "legacy"}},
                                           "template": template}})
    async with backend(k8s) as b:
        k8s.apply_model("adopted", {"runtime": {"kind": "command", "image": "legacy:1"},
                                    "scaleTargetRef": {"name": "legacy"}})
        await eventually(lambda: k8s.get("v1/services", "adopted"), what="the model's Service")
        assert k8s.get("v1/services", "adopted")["spec"]["selector"] == {"app": "legacy"}
        await b.scale("adopted", 1)
        await eventually(lambda: b.ready_replicas("adopted") == 1)
        assert k8s.get(DEPLOY, "adopted") is None
        assert [(w.name, w.replicas) for w in k8s.emu.scale_writes() if w.identity != "anonymous"] \
            == [("legacy", 1)]


async def test_spec_change_patches_the_template_but_never_replicas(k8s: Harness) -> None:
    async with backend(k8s) as b:
        k8s.apply_model("iris", {**IRIS, "scaling": {"initialScale": 0}})
        await eventually(lambda: k8s.get(DEPLOY, "iris"))
        await b.scale("iris", 2)
        k8s.apply_model("iris", {"runtime": {"model": "iris", "env": [{"name": "X", "value": "1"}]},
                                 "scaling": {"initialScale": 0}})
        await eventually(lambda: any(e.get("name") == "X" for e in k8s.get(DEPLOY, "iris")[
            "spec"]["template"]["spec"]["containers"][0]["env"]), what="the template update")
        assert k8s.get(DEPLOY, "iris")["spec"]["replicas"] == 2
        patches = [w for w in k8s.emu.writes if w.resource == DEPLOY and w.subresource == ""
                   and w.verb == "patch"]
        assert patches and all(w.replicas is None for w in patches)


async def test_the_crd_schema_refuses_what_it_can(k8s: Harness) -> None:
    with pytest.raises(ApiError) as err:
        k8s.store.create(MS, NS, {"metadata": {"name": "bad"}, "spec": {"scaling": {"target": -1}}})
    assert err.value.code == 422 and "target" in err.value.message


async def test_invalid_model_service_is_reported_in_status_and_not_served(k8s: Harness) -> None:
    async with backend(k8s) as b:
        k8s.apply_model("ok", IRIS)
        # The schema accepts this; the parser knows the builtin runtime needs a model.
        k8s.apply_model("bad", {"runtime": {"kind": "builtin"}})
        cond = await eventually(lambda: condition(k8s.get(MS, "bad"), "Ready"), what="bad's status")
        assert cond["status"] == "False" and cond["reason"] == "InvalidSpec"
        assert "spec.runtime.model: required" in cond["message"]
        assert "ok" in b.models and "bad" not in b.models
        assert k8s.get(DEPLOY, "bad") is None
        # Fixed, it is served like any other.
        k8s.apply_model("bad", {"runtime": {"kind": "builtin", "model": "iris"}})
        await eventually(lambda: k8s.get(DEPLOY, "bad"), what="the fixed model's deployment")
        # Deleted, it is forgotten (its Deployment goes with it, by owner reference).
        k8s.store.delete(MS, NS, "bad")
        await eventually(lambda: "bad" not in b.models and k8s.get(DEPLOY, "bad") is None)
