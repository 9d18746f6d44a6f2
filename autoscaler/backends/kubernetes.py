"""The Kubernetes backend: each ModelService becomes a Deployment whose replicas only we write.

The one module that imports kubernetes_asyncio (for its configuration, authentication and TLS);
objects stay plain dicts. Every write — creating a Deployment, the scale subresource, the status
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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient, Configuration

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
    render_status,
    summarize_pods,
)
from autoscaler.backends.k8s_watch import Informer, KubeError, Obj
from zeroserve.spec import ModelService, SpecError

log = logging.getLogger(__name__)

GROUP_PATH = "/apis/serving.zeroserve.io/v1alpha1"
TEMPLATE_HASH = "serving.zeroserve.io/template-hash"


SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def configuration(host: str | None = None, token: str | None = None, *,
                  sa_dir: Path = SA_DIR) -> Configuration:
    """In-cluster configuration (service account token and CA, KUBERNETES_SERVICE_HOST/PORT)
    unless a host is given (tests against the emulator)."""
    if host is None:
        from kubernetes_asyncio import config

        cfg = Configuration()
        config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=cfg, token_filename=str(sa_dir / "token"),
            cert_filename=str(sa_dir / "ca.crt"))
        return cfg
    cfg = Configuration(host=host)
    if token:
        cfg.api_key = {"BearerToken": token}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
    return cfg


class KubeApi:
    """JSON in, JSON out, over kubernetes_asyncio's authenticated client."""

    def __init__(self, cfg: Configuration) -> None:
        self._client = ApiClient(cfg)

    async def close(self) -> None:
        await self._client.close()

    async def _call(self, method: str, path: str, *, query: dict[str, str] | None = None,
                    body: Any = None, patch: bool = False, limit: Any = 30.0) -> Any:
        headers = {"Accept": "application/json",
                   "Content-Type": "application/merge-patch+json" if patch else "application/json"}
        try:
            return await self._client.call_api(
                path, method, query_params=list((query or {}).items()), header_params=headers,
                body=body, auth_settings=["BearerToken"], _preload_content=False,
                _request_timeout=limit)
        except aiohttp.ClientError as e:
            raise KubeError(0, {"message": str(e)}) from e

    async def request(self, method: str, path: str, *, body: Any = None, patch: bool = False,
                      ok_missing: bool = False) -> Obj | None:
        resp = await self._call(method, path, body=body, patch=patch)
        try:
            data = await resp.json(content_type=None)
        except (ValueError, aiohttp.ClientError):
            data = {}
        finally:
            resp.release()
        if resp.status == 404 and ok_missing:
            return None
        if not 200 <= resp.status < 300:
            raise KubeError(resp.status, data if isinstance(data, dict) else {})
        return data if isinstance(data, dict) else {}

    async def list(self, path: str, label_selector: str) -> tuple[list[Obj], str]:
        data = await self.request("GET", path + (f"?labelSelector={label_selector}"
                                                 if label_selector else ""))
        assert data is not None
        return list(data.get("items") or []), str(data["metadata"].get("resourceVersion", ""))

    async def watch(self, path: str, label_selector: str, resource_version: str,
                    timeout_s: float) -> AsyncIterator[Obj]:
        query = {"watch": "true", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(int(timeout_s))}
        if label_selector:
            query["labelSelector"] = label_selector
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_s + 30)
        resp = await self._call("GET", path, query=query, limit=timeout)
        try:
            if resp.status != 200:
                raise KubeError(resp.status, await resp.json(content_type=None))
            async for line in resp.content:
                if line.strip():
                    yield json.loads(line)
        finally:
            resp.release()


@dataclass(frozen=True, slots=True)
class KubernetesConfig:
    namespace: str
    render: RenderConfig
    watch_timeout_s: float = 300.0
    prefetch_configmap: str = "zeroserve-prefetch"


@dataclass
class _Model:
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
        self.models: dict[str, _Model] = {}
        self._raw: dict[str, Obj] = {}         # ModelService objects seen, valid or not
        self._invalid: dict[str, str] = {}     # name -> the parser's errors, reported in status
        self._invalid_status: dict[str, Obj] = {}
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
            self.models[svc.name] = _Model(svc, raw, EndpointSet(svc.name))
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
            for table in (self._raw, self._invalid, self._invalid_status):
                table.pop(name, None)
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
        self._invalid_status.pop(name, None)
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

    def _pods_of(self, state: _Model) -> list[Obj]:
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
                    elif name in self._invalid and name in self._raw:
                        await self._write_invalid_status(name)
                except (KubeError, aiohttp.ClientError, TimeoutError) as e:
                    log.warning("model %s: reconcile failed: %s; will retry", name, e)
                    self._dirty.add(name)
            if self._dirty:
                await asyncio.sleep(1.0)
                self._wake.set()

    async def _reconcile(self, state: _Model) -> None:
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
        await self._write_status(state, deploy, summary)

    async def _ensure_deployment(self, state: _Model, deploy: Obj | None) -> Obj | None:
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

    async def _ensure_service(self, state: _Model, deploy: Obj) -> None:
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

    async def _write_status(self, state: _Model, deploy: Obj | None, summary: Any) -> None:
        if not state.obj.get("metadata", {}).get("uid"):
            return  # not (yet) a stored ModelService: nothing to write status on
        desired = int(deploy["spec"].get("replicas", 1)) if deploy is not None else 0
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.wall()))
        previous = state.last_status or (state.obj.get("status") or {})
        status = render_status(generation=int(state.obj["metadata"].get("generation", 1)),
                               deployment=state.deployment, desired=desired, pods=summary,
                               previous=previous, now_rfc3339=now, cold_start=state.cold_start,
                               error=state.error,
                               error_reason="InvalidSpec" if state.svc.name in self._invalid
                               else "ReconcileError")
        if status == state.last_status:
            return
        await self._patch_status(state.svc.name, status)
        state.last_status = status

    async def _write_invalid_status(self, name: str) -> None:
        if not self.is_leader():
            return
        obj = self._raw[name]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.wall()))
        previous = self._invalid_status.get(name) or obj.get("status") or {}
        status = render_status(generation=int(obj["metadata"].get("generation", 1)), deployment="",
                               desired=0, pods=summarize_pods(()), previous=previous,
                               now_rfc3339=now, cold_start=None, error=self._invalid[name],
                               error_reason="InvalidSpec")
        if status != self._invalid_status.get(name):
            await self._patch_status(name, status)
            self._invalid_status[name] = status

    async def _patch_status(self, name: str, status: Obj) -> None:
        path = f"{self._paths['ms']}/{name}/status"
        try:
            await self.api.request("PATCH", path, body={"status": status}, patch=True)
        except KubeError as e:
            if e.status != 404:  # deleted meanwhile: its DELETED event is on its way
                raise
