"""A Kubernetes API server emulator: the subset zeroserve's controller and activator speak.

There is no cluster here, so the controller is tested against this aiohttp server instead. It keeps
the semantics the controller depends on, and nothing else:

- objects with `metadata.resourceVersion` from one global counter; PUT with a stale version is a 409
  Conflict (that is what makes Lease-based leader election safe);
- list + watch streams (`?watch=true&resourceVersion=N`), replaying history after N; a version older
  than the retained history answers an ERROR event with code 410 Gone, like a compacted etcd;
  `timeoutSeconds` ends a stream, and `expire_watches()` ends them all;
- the status subresource (writes to the main resource keep status, writes to /status keep spec) and
  `metadata.generation` bumped on spec changes;
- the Deployment scale subresource, recording every write with the caller's identity (the bearer
  token), so a test can prove that only one autoscaler ever wrote replicas;
- JSON merge patch (strategic merge patch is accepted for built-in kinds and treated the same way,
  which is exact for the patches zeroserve sends; custom resources refuse it, like the real server);
- ownerReference cascade on delete;
- in `cluster.py`: a deployment controller, a scheduler with a GPU budget, a kubelet that starts real
  local processes for pods, and an EndpointSlice controller.
"""

from __future__ import annotations

import asyncio
import copy
import json
import ssl
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from aiohttp import web

Obj = dict[str, Any]
Key = tuple[str, str, str]  # (resource, namespace, name)


@dataclass(frozen=True, slots=True)
class Resource:
    api_version: str
    kind: str
    plural: str
    has_status: bool = False
    custom: bool = False

    @property
    def path(self) -> str:
        return f"{self.api_version}/{self.plural}"


RESOURCES = [
    Resource("v1", "Pod", "pods", has_status=True),
    Resource("v1", "Service", "services", has_status=True),
    Resource("v1", "Event", "events"),
    Resource("v1", "Secret", "secrets"),
    Resource("v1", "ConfigMap", "configmaps"),
    Resource("apps/v1", "Deployment", "deployments", has_status=True),
    Resource("coordination.k8s.io/v1", "Lease", "leases"),
    Resource("discovery.k8s.io/v1", "EndpointSlice", "endpointslices"),
    Resource("serving.zeroserve.io/v1alpha1", "ModelService", "modelservices", has_status=True,
             custom=True),
]
BY_PATH = {r.path: r for r in RESOURCES}


@dataclass(frozen=True, slots=True)
class Write:
    """One mutating request, as the audit log of a real API server would record it."""

    identity: str
    verb: str
    resource: str
    name: str
    subresource: str
    replicas: int | None
    at_s: float


@dataclass(frozen=True, slots=True)
class Access:
    """One request in RBAC terms: who, which verb, on what (for checking Roles against use)."""

    identity: str
    verb: str
    group: str
    resource: str        # plural, or plural/subresource
    name: str


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def status(self) -> Obj:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def parse_selector(text: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """`a=b,c!=d,e,!f,g in (x,y)` -> [(key, op, values)]."""
    out: list[tuple[str, str, tuple[str, ...]]] = []
    depth, start, parts = 0, 0, []
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    for raw in (p.strip() for p in parts):
        if not raw:
            continue
        if " in " in raw or " notin " in raw:
            op = "notin" if " notin " in raw else "in"
            key, _, vals = raw.partition(f" {op} ")
            values = tuple(v.strip() for v in vals.strip().strip("()").split(","))
            out.append((key.strip(), op, values))
        elif "!=" in raw:
            key, _, val = raw.partition("!=")
            out.append((key.strip(), "!=", (val.strip(),)))
        elif "=" in raw:
            key, _, val = raw.replace("==", "=").partition("=")
            out.append((key.strip(), "=", (val.strip(),)))
        elif raw.startswith("!"):
            out.append((raw[1:].strip(), "!exists", ()))
        else:
            out.append((raw, "exists", ()))
    return out


def selector_matches(selector: list[tuple[str, str, tuple[str, ...]]], labels: dict[str, str]) -> bool:
    for key, op, values in selector:
        present = key in labels
        if op == "=" and labels.get(key) != values[0]:
            return False
        if op == "!=" and labels.get(key) == values[0]:
            return False
        if op == "in" and labels.get(key) not in values:
            return False
        if op == "notin" and present and labels[key] in values:
            return False
        if op == "exists" and not present:
            return False
        if op == "!exists" and present:
            return False
    return True


@dataclass
class _Watcher:
    resource: str
    namespace: str
    selector: list[tuple[str, str, tuple[str, ...]]]
    queue: asyncio.Queue[Obj | None] = field(default_factory=asyncio.Queue)  # None ends the stream

    def wants(self, resource: str, obj: Obj) -> bool:
        meta = obj["metadata"]
        return (resource == self.resource and meta.get("namespace") == self.namespace
                and selector_matches(self.selector, meta.get("labels") or {}))


class Store:
    """Objects, one resourceVersion counter, bounded event history and live watchers."""

    def __init__(self, history_limit: int = 10_000) -> None:
        self.objects: dict[Key, Obj] = {}
        self.rv = 100  # a real server never lists at version 0, which means "any"
        self.history: deque[tuple[int, str, Obj]] = deque(maxlen=history_limit)
        self.floor_rv = 0  # watches from below this answer 410 Gone
        self.watchers: list[_Watcher] = []
        self.changed = asyncio.Event()
        self.schemas: dict[str, Any] = {}  # resource path -> openAPIV3Schema from a CRD

    def get(self, resource: str, namespace: str, name: str) -> Obj | None:
        return self.objects.get((resource, namespace, name))

    def list(self, resource: str, namespace: str, selector: str = "") -> list[Obj]:
        sel = parse_selector(selector)
        return [o for (res, ns, _), o in sorted(self.objects.items())
                if res == resource and ns == namespace
                and selector_matches(sel, o["metadata"].get("labels") or {})]

    def _emit(self, resource: str, event_type: str, obj: Obj) -> None:
        event = {"type": event_type, "object": copy.deepcopy(obj)}
        self.history.append((self.rv, resource, event))
        if len(self.history) == self.history.maxlen:
            self.floor_rv = self.history[0][0]
        for w in self.watchers:
            if w.wants(resource, obj):
                w.queue.put_nowait(event)
        self.changed.set()

    def create(self, resource: str, namespace: str, obj: Obj) -> Obj:
        res = BY_PATH[resource]
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        if (resource, namespace, name) in self.objects:
            raise ApiError(409, "AlreadyExists", f'{res.plural} "{name}" already exists')
        self._validate(resource, obj)
        self.rv += 1
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        meta.update(namespace=namespace, uid=str(uuid.uuid4()), resourceVersion=str(self.rv),
                    creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        if res.has_status:
            meta["generation"] = 1
            if res.custom:
                obj.pop("status", None)
        self.objects[(resource, namespace, name)] = obj
        self._emit(resource, "ADDED", obj)
        return obj

    def replace(self, resource: str, namespace: str, name: str, obj: Obj, *,
                subresource: str = "", check_rv: bool = True) -> Obj:
        old = self.get(resource, namespace, name)
        if old is None:
            raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
        want_rv = (obj.get("metadata") or {}).get("resourceVersion")
        if check_rv and want_rv and want_rv != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {resource} "{name}": '
                           "the object has been modified; please apply your changes to the latest "
                           "version and try again")
        res = BY_PATH[resource]
        new = copy.deepcopy(obj)
        new["apiVersion"], new["kind"] = res.api_version, res.kind
        meta = new.setdefault("metadata", {})
        for k in ("name", "namespace", "uid", "creationTimestamp", "generation"):
            if k in old["metadata"]:
                meta[k] = old["metadata"][k]
        if res.has_status:
            if subresource == "status":
                new = {**copy.deepcopy(old), "status": new.get("status")}
                if new["status"] is None:
                    new.pop("status")
            else:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
                if new.get("spec") != old.get("spec"):
                    new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        self._validate(resource, new)
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if new == old:
            return old  # a no-op write does not bump the version, as in a real server
        self.rv += 1
        new["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[(resource, namespace, name)] = new
        self._emit(resource, "MODIFIED", new)
        return new

    def patch(self, resource: str, namespace: str, name: str, patch: Obj, *,
              subresource: str = "") -> Obj:
        old = self.get(resource, namespace, name)
        if old is None:
            raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
        merged = merge_patch(old, patch)
        return self.replace(resource, namespace, name, merged, subresource=subresource,
                            check_rv="resourceVersion" in (patch.get("metadata") or {}))

    def delete(self, resource: str, namespace: str, name: str) -> Obj:
        old = self.objects.pop((resource, namespace, name), None)
        if old is None:
            raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
        self.rv += 1
        old = {**old, "metadata": {**old["metadata"], "resourceVersion": str(self.rv)}}
        self._emit(resource, "DELETED", old)
        uid = old["metadata"]["uid"]
        for (res, ns, dep_name), dep in list(self.objects.items()):  # garbage collection
            owners = dep["metadata"].get("ownerReferences") or []
            if ns == namespace and any(o.get("uid") == uid for o in owners):
                self.delete(res, ns, dep_name)
        return old

    def _validate(self, resource: str, obj: Obj) -> None:
        schema = self.schemas.get(resource)
        if schema is None:
            return
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(obj), key=str)
        if errors:
            text = "; ".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
            raise ApiError(422, "Invalid", text)

    def compact(self) -> None:
        """Forget all history, as etcd compaction does: older watches now get 410 Gone."""
        self.history.clear()
        self.floor_rv = self.rv

    def expire_watches(self) -> None:
        for w in self.watchers:
            w.queue.put_nowait(None)


def openapi_to_jsonschema(schema: Any) -> Any:
    """OpenAPI 3.0 (what a CRD holds) to JSON Schema: boolean exclusiveMinimum/Maximum become numbers."""
    if isinstance(schema, list):
        return [openapi_to_jsonschema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: openapi_to_jsonschema(v) for k, v in schema.items()}
    for bound in ("Minimum", "Maximum"):
        if out.get("exclusive" + bound) is True:
            out["exclusive" + bound] = out.pop(bound.lower())
        elif out.get("exclusive" + bound) is False:
            del out["exclusive" + bound]
    return out


def _identity(request: web.Request) -> str:
    auth = request.headers.get("Authorization", "")
    return auth.removeprefix("Bearer ").strip() or "anonymous"


class ApiEmulator:
    """The HTTP face of `Store`; `cluster.FakeCluster` adds the controllers and the kubelet."""

    def __init__(self, store: Store | None = None) -> None:
        self.store = store or Store()
        self.writes: list[Write] = []
        self.accesses: list[Access] = []
        self.latency_s: dict[tuple[str, str], float] = {}  # (verb, plural) -> added delay, for races
        self.app = web.Application()
        for prefix in ("/api/{version}", "/apis/{group}/{version}"):
            base = prefix + "/namespaces/{ns}/{plural}"
            self.app.router.add_route("*", base, self._collection)
            self.app.router.add_route("*", base + "/{name}", self._item)
            self.app.router.add_route("*", base + "/{name}/{sub}", self._item)
        self._runner: web.AppRunner | None = None
        self.closing = False
        self.url = ""
        self.clock: Callable[[], float] = time.monotonic

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> str:
        # A short shutdown: watch handlers of killed clients must not hold the test's teardown.
        self._runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        self.closing = True
        self.store.expire_watches()
        if self._runner is not None:
            await self._runner.cleanup()

    def register_crd(self, crd: Obj) -> None:
        """Validate custom objects against a CRD's openAPIV3Schema, as the API server does."""
        group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
        for version in crd["spec"]["versions"]:
            schema = openapi_to_jsonschema(version["schema"]["openAPIV3Schema"])
            self.store.schemas[f"{group}/{version['name']}/{plural}"] = schema

    def scale_writes(self) -> list[Write]:
        return [w for w in self.writes if w.replicas is not None]

    @staticmethod
    def _resource(request: web.Request) -> str:
        info = request.match_info
        version = info["version"]
        path = f"{info['group']}/{version}/{info['plural']}" if "group" in info else \
            f"{version}/{info['plural']}"
        if path not in BY_PATH:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource {path}")
        return path

    async def _collection(self, request: web.Request) -> web.StreamResponse:
        try:
            resource = self._resource(request)
            ns = request.match_info["ns"]
            watching = request.query.get("watch", "").lower() in ("true", "1")
            verb = {"GET": "watch" if watching else "list", "POST": "create"}.get(request.method, "?")
            self._access(request, verb, resource, "")
            if request.method == "GET":
                if watching:
                    return await self._watch(request, resource, ns)
                items = self.store.list(resource, ns, request.query.get("labelSelector", ""))
                res = BY_PATH[resource]
                return web.json_response({"apiVersion": res.api_version, "kind": res.kind + "List",
                                          "metadata": {"resourceVersion": str(self.store.rv)},
                                          "items": items})
            if request.method == "POST":
                await self._delay("create", resource)
                obj = self.store.create(resource, ns, await request.json())
                self._audit(request, "create", resource, obj["metadata"]["name"], "", obj)
                return web.json_response(obj, status=201)
            raise ApiError(405, "MethodNotAllowed", request.method)
        except ApiError as e:
            return web.json_response(e.status(), status=e.code)

    async def _item(self, request: web.Request) -> web.StreamResponse:
        try:
            resource = self._resource(request)
            ns, name = request.match_info["ns"], request.match_info["name"]
            sub = request.match_info.get("sub", "")
            verb = {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
                request.method, "?")
            self._access(request, verb, resource + (f"/{sub}" if sub else ""), name)
            if sub not in ("", "status", "scale") or (sub == "scale" and resource != "apps/v1/deployments"):
                raise ApiError(404, "NotFound", f"no subresource {sub}")
            if request.method == "GET":
                obj = self.store.get(resource, ns, name)
                if obj is None:
                    raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
                return web.json_response(_scale_of(obj) if sub == "scale" else obj)
            if request.method == "DELETE":
                obj = self.store.delete(resource, ns, name)
                self._audit(request, "delete", resource, name, sub, None)
                return web.json_response(obj)
            body = await request.json()
            if sub == "scale":
                obj = self._write_scale(request, ns, name, body)
                return web.json_response(_scale_of(obj))
            if request.method == "PUT":
                obj = self.store.replace(resource, ns, name, body, subresource=sub)
            elif request.method == "PATCH":
                ctype = request.content_type
                if ctype == "application/strategic-merge-patch+json" and BY_PATH[resource].custom:
                    raise ApiError(415, "UnsupportedMediaType",
                                   "strategic merge patch is not supported for custom resources")
                if ctype not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                    raise ApiError(415, "UnsupportedMediaType", f"patch type {ctype} not emulated")
                obj = self.store.patch(resource, ns, name, body, subresource=sub)
            else:
                raise ApiError(405, "MethodNotAllowed", request.method)
            self._audit(request, request.method.lower(), resource, name, sub, body)
            return web.json_response(obj)
        except ApiError as e:
            return web.json_response(e.status(), status=e.code)

    def _access(self, request: web.Request, verb: str, resource: str, name: str) -> None:
        parts = resource.split("/")
        group = "" if parts[0] == "v1" else parts[0]
        plural = "/".join(parts[1:] if group == "" else parts[2:])
        self.accesses.append(Access(_identity(request), verb, group, plural, name))

    async def _delay(self, verb: str, resource: str) -> None:
        delay = self.latency_s.get((verb, resource.split("/")[-1]))
        if delay:
            await asyncio.sleep(delay)

    def _write_scale(self, request: web.Request, ns: str, name: str, body: Obj) -> Obj:
        replicas = (body.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise ApiError(422, "Invalid", f"spec.replicas = {replicas!r}, must be >= 0")
        old = self.store.get("apps/v1/deployments", ns, name)
        if old is None:
            raise ApiError(404, "NotFound", f'deployments "{name}" not found')
        want_rv = (body.get("metadata") or {}).get("resourceVersion")
        if request.method == "PUT" and want_rv and want_rv != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'deployments "{name}": the object has been modified')
        new = copy.deepcopy(old)
        new["spec"]["replicas"] = replicas
        obj = self.store.replace("apps/v1/deployments", ns, name, new, check_rv=False)
        self._audit(request, request.method.lower(), "apps/v1/deployments", name, "scale", body)
        return obj

    def _audit(self, request: web.Request, verb: str, resource: str, name: str, sub: str,
               body: Obj | None) -> None:
        replicas = None
        if resource == "apps/v1/deployments" and body is not None:
            value = (body.get("spec") or {}).get("replicas")
            replicas = value if isinstance(value, int) else None
        self.writes.append(Write(_identity(request), verb, resource, name, sub, replicas, self.clock()))

    async def _watch(self, request: web.Request, resource: str, ns: str) -> web.StreamResponse:
        watcher = _Watcher(resource, ns, parse_selector(request.query.get("labelSelector", "")))
        since = request.query.get("resourceVersion", "")
        timeout_s = float(request.query.get("timeoutSeconds", "0") or 0) or None
        backlog: list[Obj] = []
        gone = False
        if since in ("", "0"):
            backlog = [{"type": "ADDED", "object": o}
                       for o in self.store.list(resource, ns, request.query.get("labelSelector", ""))]
        elif int(since) < self.store.floor_rv:
            gone = True
        else:
            backlog = [ev for rv, res, ev in self.store.history
                       if rv > int(since) and watcher.wants(res, ev["object"])]
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if self.closing:
            return response
        if gone:
            err = ApiError(410, "Expired", f"too old resource version: {since} ({self.store.floor_rv})")
            await response.write(json.dumps({"type": "ERROR", "object": err.status()}).encode() + b"\n")
            return response
        self.store.watchers.append(watcher)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s if timeout_s else None
        try:
            for ev in backlog:
                await response.write(json.dumps(ev).encode() + b"\n")
            # Not only a cancel ends this loop: Python 3.11's wait_for can swallow one that lands as
            # an event arrives, and then only the closing flag stops it.
            while not self.closing:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), remaining)
                except TimeoutError:
                    break
                if event is None:
                    break
                await response.write(json.dumps(event).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.store.watchers.remove(watcher)
        return response


def _scale_of(deploy: Obj) -> Obj:
    meta = deploy["metadata"]
    labels = (deploy["spec"].get("selector") or {}).get("matchLabels") or {}
    return {"apiVersion": "autoscaling/v1", "kind": "Scale",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                         "resourceVersion": meta["resourceVersion"], "uid": meta["uid"]},
            "spec": {"replicas": deploy["spec"].get("replicas", 1)},
            "status": {"replicas": (deploy.get("status") or {}).get("replicas", 0),
                       "selector": ",".join(f"{k}={v}" for k, v in labels.items())}}

