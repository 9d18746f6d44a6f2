"""Pure rendering for the Kubernetes backend: ModelService -> Deployment and Service, pods -> status.

No API calls here, so each shape is unit-tested and schema-validated offline; `kubernetes.py` does
the talking.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from autoscaler.backends.base import Endpoint
from zeroserve.spec import API_VERSION, KIND, ModelService, parse_specs

Obj = dict[str, Any]

LABEL_MODEL = "serving.zeroserve.io/model"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "zeroserve"
GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_PORT = 8080
STORAGE_SECRET = "zeroserve-storage-credentials"


@dataclass(frozen=True, slots=True)
class RenderConfig:
    image: str                                  # the zeroserve image: storage-init, builtin runtimes
    cache_host_path: str = "/var/cache/zeroserve"   # the node cache, shared with the DaemonSet
    model_dir: str = "/mnt/models"
    min_progress_deadline_s: int = 3600         # a 70B model can take most of an hour to land


@dataclass(frozen=True, slots=True)
class PodSummary:
    total: int
    ready: int
    unschedulable: tuple[tuple[str, str], ...]   # (pod name, scheduler message)
    failing: tuple[tuple[str, str, str], ...] = ()  # (pod, reason, message): CrashLoopBackOff, ...

# Waiting reasons that are a normal step of starting, not a problem worth a status line.
_STARTING = frozenset({"ContainerCreating", "PodInitializing"})


def model_service_from_object(obj: Mapping[str, Any]) -> ModelService:
    """The same parser as `zeroserve up` (SpecError on invalid), ignoring status and server fields."""
    doc = {"apiVersion": obj.get("apiVersion", API_VERSION), "kind": KIND,
           "metadata": {k: v for k, v in (obj.get("metadata") or {}).items()
                        if k in ("name", "namespace", "labels", "annotations")},
           "spec": obj.get("spec") or {}}
    return parse_specs(json.dumps(doc))[0]


def owner_reference(obj: Mapping[str, Any]) -> Obj:
    meta = obj["metadata"]
    return {"apiVersion": obj.get("apiVersion", API_VERSION), "kind": obj.get("kind", KIND),
            "name": meta["name"], "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}


def model_port(svc: ModelService) -> int:
    return svc.runtime.port or DEFAULT_PORT


def _fill(items: Iterable[str], svc: ModelService, cfg: RenderConfig) -> list[str]:
    values = {"model_dir": cfg.model_dir, "port": str(model_port(svc)), "model_name": svc.name}
    out = []
    for item in items:
        for key, value in values.items():
            item = item.replace("{" + key + "}", value)
        out.append(item)
    return out


def runtime_container(svc: ModelService, cfg: RenderConfig) -> Obj:
    rt = svc.runtime
    port = str(model_port(svc))
    container: Obj = {"name": "runtime"}
    if rt.kind == "command":
        container["image"] = rt.image or cfg.image
        if rt.command:
            container["command"] = _fill(rt.command, svc, cfg)
        if rt.args:
            container["args"] = _fill(rt.args, svc, cfg)
    else:
        args = ["serve", "--model", rt.model or svc.name, "--model-name", svc.name,
                "--model-dir", cfg.model_dir, "--port", port]
        if rt.kind == "hf":
            args[1:1] = ["--runtime", "hf"]
        if rt.model == "tiny-llm":
            args += ["--load-time-s", str(rt.load_time_s), "--token-latency-s", str(rt.token_latency_s)]
        container.update(image=rt.image or cfg.image, command=["zeroserve"], args=args)
    env = {**rt.env, "ZEROSERVE_MODEL_NAME": svc.name, "ZEROSERVE_CACHE_DIR": cfg.cache_host_path,
           "PORT": port}
    container["env"] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    container["ports"] = [{"name": "http", "containerPort": model_port(svc), "protocol": "TCP"}]
    # A short period makes a cold start visible within a second of the server being ready; no
    # liveness probe, because a model that takes 20 minutes to load must not be restarted.
    container["readinessProbe"] = {"httpGet": {"path": rt.readiness_path, "port": "http"},
                                   "periodSeconds": 1, "failureThreshold": 3, "timeoutSeconds": 2}
    container["volumeMounts"] = [{"name": "model", "mountPath": cfg.model_dir, "readOnly": True},
                                 {"name": "node-cache", "mountPath": cfg.cache_host_path,
                                  "readOnly": True}]
    if rt.gpus:
        container["resources"] = {"limits": {GPU_RESOURCE: rt.gpus}}
    return container


def storage_init_container(svc: ModelService, cfg: RenderConfig) -> Obj:
    return {"name": "storage-init", "image": cfg.image, "command": ["zeroserve"],
            "args": ["storage-init", svc.storage_uri or "", cfg.model_dir],
            "env": [{"name": "ZEROSERVE_CACHE_DIR", "value": cfg.cache_host_path}],
            # Object-store / Hugging Face credentials, when the install has them.
            "envFrom": [{"secretRef": {"name": STORAGE_SECRET, "optional": True}}],
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
            "volumeMounts": [{"name": "model", "mountPath": cfg.model_dir},
                             {"name": "node-cache", "mountPath": cfg.cache_host_path}]}


def render_deployment(svc: ModelService, cfg: RenderConfig, owner: Mapping[str, Any] | None,
                      replicas: int) -> Obj:
    labels = {LABEL_MODEL: svc.name, LABEL_MANAGED_BY: MANAGER}
    pod_spec: Obj = {
        "containers": [runtime_container(svc, cfg)],
        "volumes": [{"name": "model", "emptyDir": {}},
                    {"name": "node-cache",
                     "hostPath": {"path": cfg.cache_host_path, "type": "DirectoryOrCreate"}}],
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 30,
    }
    if svc.storage_uri:
        pod_spec["initContainers"] = [storage_init_container(svc, cfg)]
    if svc.runtime.gpus:
        pod_spec["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    meta: Obj = {"name": svc.name, "namespace": svc.namespace, "labels": dict(labels)}
    if owner is not None:
        meta["ownerReferences"] = [owner_reference(owner)]
    # Knative's default 600 s deadline fails revisions of large models that are still downloading.
    deadline = max(cfg.min_progress_deadline_s, int(svc.runtime.ready_timeout_s) + 600)
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {
            "replicas": replicas,
            "progressDeadlineSeconds": deadline,
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": {LABEL_MODEL: svc.name}},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    }


def render_service(svc: ModelService, selector: Mapping[str, str], port: int,
                   owner: Mapping[str, Any] | None) -> Obj:
    """A headless Service: it exists so that EndpointSlices list the model's pods for the activator."""
    meta: Obj = {"name": svc.name, "namespace": svc.namespace,
                 "labels": {LABEL_MODEL: svc.name, LABEL_MANAGED_BY: MANAGER}}
    if owner is not None:
        meta["ownerReferences"] = [owner_reference(owner)]
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"clusterIP": "None", "selector": dict(selector), "publishNotReadyAddresses": False,
                     "ports": [{"name": "http", "port": port, "targetPort": port, "protocol": "TCP"}]}}


def pods_selected(pods: Iterable[Mapping[str, Any]], selector: Mapping[str, str]) -> list[Obj]:
    """The pods a Deployment's matchLabels select."""
    return [dict(p) for p in pods
            if all((p["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())]


def ready_endpoints(pods: Iterable[Mapping[str, Any]], default_port: int) -> tuple[Endpoint, ...]:
    """Ready, not terminating pods as endpoints (pod IP, first container port), sorted by name."""
    out = []
    for pod in pods:
        status = pod.get("status") or {}
        if pod["metadata"].get("deletionTimestamp"):
            continue  # terminating: no new requests, even while its readiness still passes
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in status.get("conditions") or [])
        if ready and status.get("podIP"):
            ports = pod["spec"]["containers"][0].get("ports") or [{}]
            port = int(ports[0].get("containerPort", default_port))
            out.append(Endpoint(pod["metadata"]["name"], status["podIP"], port))
    return tuple(sorted(out, key=lambda e: e.id))


def summarize_pods(pods: Iterable[Mapping[str, Any]]) -> PodSummary:
    total = ready = 0
    unschedulable: list[tuple[str, str]] = []
    failing: list[tuple[str, str, str]] = []
    for pod in pods:
        total += 1
        status = pod.get("status") or {}
        for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") and waiting["reason"] not in _STARTING:
                failing.append((pod["metadata"]["name"], str(waiting["reason"]),
                                f"{cs.get('name')}: {waiting.get('message', '')}".strip()))
        for cond in status.get("conditions") or []:
            if cond.get("type") == "Ready" and cond.get("status") == "True":
                ready += 1
            if (cond.get("type") == "PodScheduled" and cond.get("status") == "False"
                    and cond.get("reason") == "Unschedulable"):
                unschedulable.append((pod["metadata"]["name"], str(cond.get("message", ""))))
    return PodSummary(total=total, ready=ready, unschedulable=tuple(sorted(unschedulable)),
                      failing=tuple(sorted(failing)))


def _condition(kind: str, ok: bool, reason: str, message: str, previous: Mapping[str, Obj],
               now_rfc3339: str) -> Obj:
    status = "True" if ok else "False"
    old = previous.get(kind)
    # lastTransitionTime moves only when the status flips, as Kubernetes conventions require.
    since = old["lastTransitionTime"] if old and old.get("status") == status else now_rfc3339
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": since}


def render_status(*, generation: int, deployment: str, desired: int, pods: PodSummary,
                  previous: Mapping[str, Any] | None, now_rfc3339: str,
                  cold_start: tuple[str, float] | None, error: str = "",
                  error_reason: str = "ReconcileError") -> Obj:
    """The ModelService status: replica counts, conditions, and the last cold start."""
    prev = previous or {}
    conds = {c["type"]: c for c in prev.get("conditions") or [] if "type" in c}
    if error:
        ready = (False, error_reason, error)
    elif pods.ready:
        ready = (True, "Serving", f"{pods.ready} replica(s) ready")
    elif desired == 0:
        ready = (True, "ScaledToZero", "scaled to zero; the activator starts a replica on demand")
    elif pods.unschedulable:
        ready = (False, "Unschedulable", pods.unschedulable[0][1])
    elif pods.failing:
        pod, reason, message = pods.failing[0]
        ready = (False, reason, f"pod {pod}: {message}")
    else:
        ready = (False, "Starting", f"waiting for {desired} replica(s) to become ready")
    zero = desired == 0 and pods.total == 0
    unsched_msg = "; ".join(f"{name}: {msg}" for name, msg in pods.unschedulable)
    status: Obj = {
        "observedGeneration": generation,
        "deployment": deployment,
        "desiredReplicas": desired,
        "readyReplicas": pods.ready,
        "conditions": [
            _condition("Ready", *ready, conds, now_rfc3339),
            _condition("ScaledToZero", zero, "NoReplicas" if zero else "HasReplicas",
                       "" if not zero else "no replicas; requests wait in the activator", conds,
                       now_rfc3339),
            _condition("Unschedulable", bool(pods.unschedulable),
                       "PodUnschedulable" if pods.unschedulable else "Scheduled", unsched_msg, conds,
                       now_rfc3339),
        ],
    }
    if cold_start is not None:
        status["lastColdStartTime"], status["lastColdStartSeconds"] = cold_start[0], cold_start[1]
    else:
        for key in ("lastColdStartTime", "lastColdStartSeconds"):
            if key in prev:
                status[key] = prev[key]
    return status
