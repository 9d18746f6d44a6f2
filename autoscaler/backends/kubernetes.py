"""The Kubernetes backend: each ModelService becomes a Deployment whose replicas only we write.

Objects stay plain dicts; the API client (kubernetes_asyncio underneath) is `kubernetes_api.KubeApi`, the
objects are rendered by `k8s_render`, watched by `k8s_watch`, and the status subresource is written
by `k8s_status`. Every write — creating a Deployment, the scale subresource, the status
subresource, the prefetch list, the Lease — happens only while `is_leader()` holds, so two
autoscaler replicas never both write. ModelServices, Deployments and pods are watched (list, then
watch from the listed resourceVersion, re-list on 410 Gone), never polled.

Pending GPU pods: a pod that the scheduler cannot place ("Insufficient nvidia.com/gpu") is left
alone — reported as the Unschedulable condition and logged — so the cluster autoscaler can add a
node and the queued requests in the activator wait for it until their own timeout. Nothing here
deletes or re-creates pods; and the progress deadline is long, so a slow model is not failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from autoscaler.backends.base import EndpointCallback, EndpointSet
from autoscaler.backends.k8s_render import (
    LABEL_MODEL,
    RenderConfig,
    model_port,
    model_service_from_object,
    pods_selected,
    ready_endpoints,
    render_deployment,
    render_service,
    summarize_pods,
)
from autoscaler.backends.k8s_status import StatusWriter
from autoscaler.backends.k8s_watch import Informer, KubeError, Obj
from autoscaler.backends.kubernetes_api import KubeApi
from zeroserve.spec import ModelService, SpecError

log = logging.getLogger(__name__)

GROUP_PATH = "/apis/serving.zeroserve.io/v1alpha1"
TEMPLATE_HASH = "serving.zeroserve.io/template-hash"


@dataclass(frozen=True, slots=True)
class KubernetesConfig:
    namespace: str
    render: RenderConfig
    watch_timeout_s: float = 300.0
    prefetch_configmap: str = "zeroserve-prefetch"


@dataclass
class ModelEntry:
    svc: ModelService
    obj: Obj                                 # the ModelService as stored (uid, generation, status)
    endpoints: EndpointSet
    cold_started_at: float | None = None     # monotonic time of the scale from zero
    cold_start: tuple[str, float] | None = None
    logged_unschedulable: tuple[tuple[str, str], ...] = ()
    error: str = ""
    pending_replicas: int | None = None      # asked for before the Deployment existed
    last_status: Obj = field(default_factory=dict)

    @property
    def deployment(self) -> str:
        ref = self.svc.scale_target_ref
        return ref.name if ref is not None else self.svc.name


class KubernetesBackend:
    def __init__(self, api: KubeApi, config: KubernetesConfig, *,
                 is_leader: Callable[[], bool] = lambda: True,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.api = api
        self.config = config
        self.is_leader = is_leader
        self.clock = clock
        self.wall = wall
        ns = config.namespace
        self._paths = {"ms": f"{GROUP_PATH}/namespaces/{ns}/modelservices",
                       "deploy": f"/apis/apps/v1/namespaces/{ns}/deployments",
                       "pods": f"/api/v1/namespaces/{ns}/pods",
                       "svc": f"/api/v1/namespaces/{ns}/services",
                       "cm": f"/api/v1/namespaces/{ns}/configmaps"}
        wt = config.watch_timeout_s
        self.model_services = Informer(api, self._paths["ms"], self._on_model_service, watch_timeout_s=wt)
        self.deployments = Informer(api, self._paths["deploy"], self._on_change, watch_timeout_s=wt)
        self.pods = Informer(api, self._paths["pods"], self._on_change, watch_timeout_s=wt)
        self.models: dict[str, ModelEntry] = {}
        self._raw: dict[str, Obj] = {}         # ModelService objects seen, valid or not
        self._invalid: dict[str, str] = {}     # name -> the parser's errors, reported in status
        self._status = StatusWriter(api, self._paths["ms"], wall)
        self._callbacks: list[EndpointCallback] = []
        self._upsert: Callable[[ModelService], None] = lambda svc: None
        self._remove: Callable[[str], None] = lambda name: None
        self._dirty: set[str] = set()
        self._have_service: set[str] = set()  # models whose Service exists (no watch needed)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # --- wiring -------------------------------------------------------------------------------

    def on_model_services(self, upsert: Callable[[ModelService], None],
                          remove: Callable[[str], None]) -> None:
        """Who learns about ModelServices as they are created, changed and deleted (the autoscaler)."""
        self._upsert, self._remove = upsert, remove

    async def start(self) -> None:
        for inf in (self.deployments, self.pods, self.model_services):
            self._tasks.append(asyncio.create_task(inf.run(), name=f"watch {inf.path}"))
        self._tasks.append(asyncio.create_task(self._reconciler(), name="k8s-reconciler"))
        await asyncio.gather(*(i.synced.wait() for i in (self.deployments, self.pods,
                                                           self.model_services)))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()

    def resync(self) -> None:
        """Reconcile every model again (on becoming leader: a follower wrote nothing)."""
        self._have_service.clear()
        self._mark(*self.models)

    # --- the Backend protocol -------------------------------------------------------------------

    def register(self, svc: ModelService) -> None:
        state = self.models.get(svc.name)
        if state is None:
            raw = self._raw.get(svc.name, {"metadata": {"name": svc.name}})
            self.models[svc.name] = ModelEntry(svc, raw, EndpointSet(svc.name))
        else:
            state.svc = svc
        self._refresh_endpoints(svc.name)
        self._mark(svc.name)

    def unregister(self, name: str) -> None:
        self.models.pop(name, None)
        self._have_service.discard(name)

    async def scale(self, model: str, replicas: int) -> None:
        state = self.models.get(model)
        if state is None:
            return
        if not self.is_leader():
            log.debug("model %s: not the leader, not scaling to %d", model, replicas)
            return
        deploy = self.deployments.cache.get(state.deployment)
        if deploy is None:
            state.pending_replicas = replicas
            self._mark(model)
            return
        current = int(deploy["spec"].get("replicas", 1))
        if current == replicas:
            return
        if current == 0 and replicas > 0 and self.ready_replicas(model) == 0:
            state.cold_started_at = self.clock()
        path = f"{self._paths['deploy']}/{state.deployment}/scale"
        await self.api.request("PATCH", path, body={"spec": {"replicas": replicas}}, patch=True)
        log.info("model %s: scaled deployment %s %d -> %d", model, state.deployment, current, replicas)
        # Record it now: the watch echo comes later, and a second scale() must see the new count.
        deploy["spec"]["replicas"] = replicas
        self._mark(model)

    async def prefetch(self, model: str) -> None:
        """Add the model's URI to the list the node-cache DaemonSet keeps warm on every GPU node."""
        state = self.models.get(model)
        if state is None or not state.svc.storage_uri or not self.is_leader():
            return
        uris = sorted({m.svc.storage_uri for m in self.models.values() if m.svc.storage_uri})
        body = {"data": {"uris": "\n".join(uris) + "\n"}}
        path = f"{self._paths['cm']}/{self.config.prefetch_configmap}"
        try:
            await self.api.request("PATCH", path, body=body, patch=True)
        except KubeError as e:
            log.warning("model %s: could not update the prefetch list: %s", model, e)

    def ready_replicas(self, model: str) -> int:
        return len(self.endpoints(model).ready)

    def endpoints(self, model: str) -> EndpointSet:
        state = self.models.get(model)
        return state.endpoints if state is not None else EndpointSet(model)

    def subscribe(self, callback: EndpointCallback) -> None:
        self._callbacks.append(callback)

    def status(self) -> dict[str, Any]:
        """Per model, like every backend: `desired` is the Deployment's replicas as last seen."""
        out: dict[str, Any] = {}
        for name, m in self.models.items():
            deploy = self.deployments.cache.get(m.deployment)
            desired = int(deploy["spec"].get("replicas", 1)) if deploy is not None else None
            out[name] = {"deployment": m.deployment, "desired": desired,
                         "ready": len(m.endpoints.ready),
                         "conditions": {c["type"]: c["reason"]
                                        for c in m.last_status.get("conditions") or []},
                         "last_cold_start_s": m.cold_start[1] if m.cold_start else None}
        return out

    # --- watch handlers -------------------------------------------------------------------------

    def _on_model_service(self, kind: str, obj: Obj) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            for table in (self._raw, self._invalid):
                table.pop(name, None)
            self._status.forget(name)
            self.unregister(name)
            self._remove(name)
            return
        self._raw[name] = obj
        try:
            svc = model_service_from_object(obj)
        except SpecError as e:
            # The CRD schema cannot express every rule; the parser's verdict goes to status, and a
            # model that was valid keeps running on its last good spec.
            message = "; ".join(e.errors)
            if self._invalid.get(name) != message:
                log.warning("modelservice %s is invalid: %s", name, message)
            self._invalid[name] = message
            if name in self.models:
                self.models[name].obj = obj
            self._mark(name)
            return
        self._invalid.pop(name, None)
        self._status.forget(name)
        state = self.models.get(name)
        changed = state is None or state.svc != svc
        self.register(svc)  # the backend's own view first; the autoscaler may register it again
        self.models[name].obj = obj
        if changed:
            self._upsert(svc)

    def _on_change(self, kind: str, obj: Obj) -> None:
        del kind
        self._mark(*self.models)
        for name in self.models:
            self._refresh_endpoints(name)

    def _pods_of(self, state: ModelEntry) -> list[Obj]:
        deploy = self.deployments.cache.get(state.deployment)
        selector = ((deploy or {}).get("spec", {}).get("selector") or {}).get("matchLabels")
        return pods_selected(self.pods.cache.values(), selector or {LABEL_MODEL: state.svc.name})

    def _refresh_endpoints(self, name: str) -> None:
        state = self.models[name]
        eps = ready_endpoints(self._pods_of(state), model_port(state.svc))
        if eps == state.endpoints.ready:
            return
        if eps and not state.endpoints.ready and state.cold_started_at is not None:
            seconds = self.clock() - state.cold_started_at
            state.cold_start = (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.wall())),
                                round(seconds, 3))
            state.cold_started_at = None
            log.info("model %s: cold start took %.2fs", name, seconds)
        state.endpoints = EndpointSet(name, eps, state.endpoints.version + 1)
        for cb in self._callbacks:
            cb(name, state.endpoints)

    # --- reconciling ------------------------------------------------------------------------------

    def _mark(self, *names: str) -> None:
        self._dirty.update(names)
        self._wake.set()

    async def _reconciler(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            for name in sorted(dirty):
                try:
                    if name in self.models:
                        await self._reconcile(self.models[name])
                    elif name in self._invalid and name in self._raw and self.is_leader():
                        await self._status.write_invalid(name, self._raw[name], self._invalid[name])
                except (KubeError, aiohttp.ClientError, TimeoutError) as e:
                    log.warning("model %s: reconcile failed: %s; will retry", name, e)
                    self._dirty.add(name)
            if self._dirty:
                await asyncio.sleep(1.0)
                self._wake.set()

    async def _reconcile(self, state: ModelEntry) -> None:
        summary = summarize_pods(self._pods_of(state))
        if summary.unschedulable != state.logged_unschedulable:
            for pod, message in summary.unschedulable:
                log.warning("model %s: pod %s cannot be scheduled: %s (left pending; queued "
                            "requests wait until their timeout)", state.svc.name, pod, message)
            state.logged_unschedulable = summary.unschedulable
        if not self.is_leader():
            return
        state.error = self._invalid.get(state.svc.name, "")
        deploy = self.deployments.cache.get(state.deployment)
        if state.svc.scale_target_ref is None:
            deploy = await self._ensure_deployment(state, deploy)
        elif deploy is None:
            state.error = f"scaleTargetRef: deployment {state.deployment} not found"
        if deploy is not None:
            await self._ensure_service(state, deploy)
            if state.pending_replicas is not None:
                replicas, state.pending_replicas = state.pending_replicas, None
                await self.scale(state.svc.name, replicas)
        await self._status.write(state, deploy, summary, invalid=state.svc.name in self._invalid)

    async def _ensure_deployment(self, state: ModelEntry, deploy: Obj | None) -> Obj | None:
        owner = state.obj if state.obj.get("metadata", {}).get("uid") else None
        asked = state.pending_replicas
        replicas = asked if asked is not None else state.svc.scaling.initial_scale
        want = render_deployment(state.svc, self.config.render, owner, replicas)
        template = json.dumps(want["spec"]["template"], sort_keys=True).encode()
        digest = hashlib.sha256(template).hexdigest()[:16]
        want["metadata"].setdefault("annotations", {})[TEMPLATE_HASH] = digest
        if deploy is None:
            if replicas > 0:
                state.cold_started_at = self.clock()
            try:
                created = await self.api.request("POST", self._paths["deploy"], body=want)
            except KubeError as e:
                if e.status != 409:
                    raise
                return None  # the previous leader made it a moment ago; the watch brings it
            if state.pending_replicas == asked:
                state.pending_replicas = None  # else scale() asked again during the POST
            log.info("model %s: created deployment with %d replica(s)", state.svc.name, replicas)
            if created is not None:
                self.deployments.cache[state.deployment] = created
            return created
        if (deploy["metadata"].get("annotations") or {}).get(TEMPLATE_HASH) != digest:
            # Everything but replicas: the scale subresource is the only way replicas change.
            spec = {k: v for k, v in want["spec"].items() if k not in ("replicas", "selector")}
            body = {"metadata": {"annotations": want["metadata"]["annotations"],
                                 "labels": want["metadata"]["labels"]}, "spec": spec}
            path = f"{self._paths['deploy']}/{state.deployment}"
            deploy = await self.api.request("PATCH", path, body=body, patch=True) or deploy
            log.info("model %s: updated the deployment's pod template", state.svc.name)
        return deploy

    async def _ensure_service(self, state: ModelEntry, deploy: Obj) -> None:
        if state.svc.name in self._have_service:
            return
        path = f"{self._paths['svc']}/{state.svc.name}"
        if await self.api.request("GET", path, ok_missing=True) is not None:
            self._have_service.add(state.svc.name)
            return
        selector = (deploy["spec"].get("selector") or {}).get("matchLabels") or {}
        ports = deploy["spec"]["template"]["spec"]["containers"][0].get("ports") or [{}]
        port = int(ports[0].get("containerPort", model_port(state.svc)))
        owner = state.obj if state.obj.get("metadata", {}).get("uid") else None
        try:
            await self.api.request("POST", self._paths["svc"],
                                   body=render_service(state.svc, selector, port, owner))
        except KubeError as e:
            if e.status != 409:
                raise
        self._have_service.add(state.svc.name)

