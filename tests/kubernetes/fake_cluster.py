"""The emulator's controllers: deployment -> pods, a one-node scheduler with a GPU budget, a kubelet
that runs each scheduled pod as a real local process, and the EndpointSlice controller.

Simplifications (each one documented in docs/kubernetes.md): pods are owned by the Deployment
directly (no ReplicaSets, no rolling updates), all pods share 127.0.0.1 so each pod gets its own
port (its containerPort is rewritten at creation, and each port gets its own EndpointSlice), the
termination grace period is capped at 10 s, readiness is probed every 50 ms (a ready pod turns
unready after the probe's failureThreshold failures in a row, as the kubelet's does), and init
containers run only under `container_launcher` (the stand-in launcher has none).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from emulator import Obj, Store, parse_selector, selector_matches

from tests.conftest import free_port  # never the same port twice (pods start concurrently)

DEPLOY, POD, SVC = "apps/v1/deployments", "v1/pods", "v1/services"
SLICE = "discovery.k8s.io/v1/endpointslices"
REPLICA = Path(__file__).with_name("replica.py")
Launcher = Callable[[Obj, int], "Launch"]


@dataclass(frozen=True, slots=True)
class Launch:
    """What the kubelet runs for a pod: init steps in order (each must exit 0), then the server."""

    argv: list[str]
    env: dict[str, str]
    init: tuple[tuple[list[str], dict[str, str]], ...] = ()


def standin_launcher(startup_delay_s: float = 0.0) -> Launcher:
    """Run the stand-in replica, serving the model named by the pod's `serving.zeroserve.io/model`."""

    def launch(pod: Obj, port: int) -> Launch:
        model = pod["metadata"]["labels"].get("serving.zeroserve.io/model", "model")
        argv = [sys.executable, str(REPLICA), "--port", str(port), "--model", model,
                "--startup-delay-s", str(startup_delay_s)]
        return Launch(argv, dict(os.environ))

    return launch


def container_launcher(scratch: Path) -> Launcher:
    """Run the pod's containers as rendered — initContainers, then the runtime: `zeroserve ...`
    becomes this interpreter's `-m zeroserve`, `--port` the pod's port, an emptyDir a folder of the
    pod under `scratch`, and a hostPath a folder of the (one) node, shared by all its pods."""

    def launch(pod: Obj, port: int) -> Launch:
        volumes: dict[str, Path] = {}
        for v in pod["spec"].get("volumes") or []:
            host = (v.get("hostPath") or {}).get("path")
            volumes[v["name"]] = (scratch / "node" / host.lstrip("/") if host
                                  else scratch / pod["metadata"]["name"] / v["name"])
        for folder in volumes.values():
            folder.mkdir(parents=True, exist_ok=True)

        def command(container: Obj) -> tuple[list[str], dict[str, str]]:
            argv = [*(container.get("command") or []), *(container.get("args") or [])]
            if not argv or argv[0] != "zeroserve":
                raise ValueError(f"cannot run {container.get('image')} {argv} outside a container")
            mounts = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts") or []}

            def local(value: str) -> str:
                for mount, folder in mounts.items():
                    if value == mount or value.startswith(mount + "/"):
                        return str(folder) + value[len(mount):]
                return value

            argv = [sys.executable, "-m", "zeroserve", *(local(a) for a in argv[1:])]
            if "--port" in argv:
                argv[argv.index("--port") + 1] = str(port)
            env = dict(os.environ)
            env.update({e["name"]: local(str(e.get("value", ""))) for e in container.get("env") or []})
            env["PORT"] = str(port)
            return argv, env

        argv, env = command(pod["spec"]["containers"][0])
        init = tuple(command(c) for c in pod["spec"].get("initContainers") or [])
        return Launch(argv, env, init)

    return launch


def _ready(pod: Obj) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _terminating(pod: Obj) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


def _gpus(pod: Obj) -> int:
    return sum(int(((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", 0))
               for c in pod["spec"].get("containers") or [])


def _port(pod: Obj) -> int:
    return int(pod["spec"]["containers"][0]["ports"][0]["containerPort"])


class FakeCluster:
    def __init__(self, store: Store, launcher: Launcher, *, gpus: int = 0) -> None:
        self.store = store
        self.launcher = launcher
        self.gpus = gpus
        self.kubelets: dict[str, asyncio.Task[None]] = {}  # pod uid -> task
        # Kubelets of pods deleted outright, still stopping their process: close() waits for them.
        self._stopping: set[asyncio.Task[None]] = set()
        self.started_pods: list[str] = []  # pod names, in start order
        self.sigterm_at: dict[str, float] = {}  # pod name -> time.monotonic() of its SIGTERM
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        # Python 3.11's wait_for can swallow a cancel that lands as its awaitable completes, so
        # every loop also checks this flag; otherwise close() could wait on a loop forever.
        self._closing = False

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1))
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        self._closing = True
        pending = {t for t in [self._task, *self.kubelets.values(), *self._stopping] if t is not None}
        for t in pending:
            t.cancel()
        # One cancel suffices: a swallowed one (see __init__) ends the loop at its next check of
        # _closing. Cancelling again every second, as this once did, interrupted a kubelet's own
        # cleanup (up to 3 s for its process to exit after SIGTERM, then SIGKILL) whenever a
        # loaded machine made that slow, and left the pod's process running past the test.
        # Only a task still running after every such bound (10 s grace + 3 s) is cancelled again.
        timeout_s = 20.0
        while pending:
            done, pending = await asyncio.wait(pending, timeout=timeout_s)
            for t in done:  # retrieved, so a kubelet's failure is not logged as never retrieved
                _ = t.cancelled() or t.exception()
            for t in pending:
                t.cancel()
            timeout_s = 1.0
        if self._session is not None:
            await self._session.close()

    def set_gpus(self, gpus: int) -> None:
        self.gpus = gpus
        self.store.changed.set()

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.store.changed.wait(), 0.5)
            self.store.changed.clear()
            self.reconcile()

    def reconcile(self) -> None:
        namespaces = {ns for (_, ns, _) in self.store.objects}
        for ns in sorted(namespaces):
            for deploy in self.store.list(DEPLOY, ns):
                self._sync_pods(deploy)
            self._schedule(ns)
            for deploy in self.store.list(DEPLOY, ns):
                self._sync_status(deploy)
            for svc in self.store.list(SVC, ns):
                self._sync_slices(svc)
        live = {p["metadata"]["uid"] for (res, _, _), p in self.store.objects.items() if res == POD}
        for uid, task in list(self.kubelets.items()):
            if uid not in live:
                task.cancel()
                del self.kubelets[uid]
                if not task.done():
                    self._stopping.add(task)
                    task.add_done_callback(self._stopping.discard)

    def _owned_pods(self, deploy: Obj) -> list[Obj]:
        """The Deployment's pods that are not terminating (those no longer count as replicas)."""
        uid = deploy["metadata"]["uid"]
        return [p for p in self.store.list(POD, deploy["metadata"]["namespace"])
                if any(o.get("uid") == uid for o in p["metadata"].get("ownerReferences") or [])
                and not p["metadata"].get("deletionTimestamp")]

    def _terminate(self, pod: Obj) -> None:
        """Graceful deletion: mark the pod; its kubelet sends SIGTERM, waits, then removes it."""
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        if pod["metadata"]["uid"] not in self.kubelets:
            self.store.delete(POD, ns, name)
            return
        grace = int(pod["spec"].get("terminationGracePeriodSeconds", 30))
        meta = {**pod["metadata"], "deletionGracePeriodSeconds": grace,
                "deletionTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.store.replace(POD, ns, name, {**pod, "metadata": meta}, check_rv=False)

    def _sync_pods(self, deploy: Obj) -> None:
        ns = deploy["metadata"]["namespace"]
        want = int(deploy["spec"].get("replicas", 1))
        pods = self._owned_pods(deploy)
        for _ in range(want - len(pods)):
            self.store.create(POD, ns, self._new_pod(deploy))
        if len(pods) > want:
            # The ReplicaSet controller's order: unscheduled, then not ready, then the newest.
            def rank(p: Obj) -> tuple[int, int, int]:
                rv = int(p["metadata"]["resourceVersion"])
                return (1 if p["spec"].get("nodeName") else 0, 1 if _ready(p) else 0, -rv)
            for victim in sorted(pods, key=rank)[: len(pods) - want]:
                self._terminate(victim)

    def _new_pod(self, deploy: Obj) -> Obj:
        template = copy.deepcopy(deploy["spec"]["template"])
        meta = template.get("metadata") or {}
        spec = template["spec"]
        port = free_port()
        main = spec["containers"][0]
        main["ports"] = [{**(main.get("ports") or [{}])[0], "containerPort": port}]
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            http = (main.get(probe) or {}).get("httpGet")
            if http is not None:
                http["port"] = port
        owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": deploy["metadata"]["name"],
                 "uid": deploy["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
        return {"metadata": {"name": f"{deploy['metadata']['name']}-{uuid.uuid4().hex[:5]}",
                             "labels": meta.get("labels") or {},
                             "annotations": meta.get("annotations") or {},
                             "ownerReferences": [owner]},
                "spec": spec, "status": {"phase": "Pending"}}

    def _schedule(self, ns: str) -> None:
        pods = [p for (res, _, _), p in self.store.objects.items() if res == POD]
        used = sum(_gpus(p) for p in pods if p["spec"].get("nodeName"))
        for pod in self.store.list(POD, ns):
            if pod["spec"].get("nodeName"):
                if pod["metadata"]["uid"] not in self.kubelets:
                    self._start_kubelet(pod)
                continue
            need = _gpus(pod)
            status = copy.deepcopy(pod.get("status") or {})
            if need > self.gpus - used:
                status["conditions"] = [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. preemption: "
                               "0/1 nodes are available: 1 No preemption victims found for incoming pod."}]
                status["phase"] = "Pending"
                self.store.replace(POD, ns, pod["metadata"]["name"], {**pod, "status": status},
                                   subresource="status", check_rv=False)
                continue
            used += need
            bound = {**pod, "spec": {**pod["spec"], "nodeName": "node-1"}}
            bound = self.store.replace(POD, ns, pod["metadata"]["name"], bound, check_rv=False)
            status["conditions"] = [{"type": "PodScheduled", "status": "True"}]
            bound = self.store.replace(POD, ns, pod["metadata"]["name"], {**bound, "status": status},
                                       subresource="status", check_rv=False)
            self._start_kubelet(bound)

    def _start_kubelet(self, pod: Obj) -> None:
        self.started_pods.append(pod["metadata"]["name"])
        self.kubelets[pod["metadata"]["uid"]] = asyncio.create_task(self._kubelet(pod))

    def _set_status(self, pod: Obj, **changes: Any) -> None:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        current = self.store.get(POD, ns, name)
        if current is None or current["metadata"]["uid"] != pod["metadata"]["uid"]:
            return
        status = {**(current.get("status") or {}), **changes}
        self.store.replace(POD, ns, name, {**current, "status": status}, subresource="status",
                           check_rv=False)

    async def _run_init(self, pod: Obj, launch: Launch) -> None:
        """Init containers in order, each to a zero exit; a failure is retried, as the kubelet does."""
        names = [c["name"] for c in pod["spec"].get("initContainers") or []]
        step = 0
        while step < len(launch.init) and not self._closing:
            argv, env = launch.init[step]
            proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=asyncio.subprocess.DEVNULL)
            try:
                code = await proc.wait()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            if code == 0:
                step += 1
                continue
            self._set_status(pod, initContainerStatuses=[{"name": names[step], "state": {"waiting": {
                "reason": "CrashLoopBackOff", "message": f"exited with {code}"}}}])
            await asyncio.sleep(0.5)

    async def _kubelet(self, pod: Obj) -> None:
        port = _port(pod)
        launch = self.launcher(pod, port)
        readiness = pod["spec"]["containers"][0].get("readinessProbe") or {}
        probe = readiness.get("httpGet") or {}
        url = f"http://127.0.0.1:{port}{probe.get('path', '/')}"
        # As the kubelet does: a ready pod turns unready only after failureThreshold probes in a row
        # fail (one slow answer on a loaded machine must not take it out of its Service).
        probe_timeout = aiohttp.ClientTimeout(total=float(readiness.get("timeoutSeconds", 1)))
        failure_threshold = int(readiness.get("failureThreshold", 3))
        scheduled = {"type": "PodScheduled", "status": "True"}
        await self._run_init(pod, launch)
        if self._closing:
            return
        self._set_status(pod, initContainerStatuses=[])
        proc = await asyncio.create_subprocess_exec(*launch.argv, env=launch.env,
                                                    stdout=asyncio.subprocess.DEVNULL)
        try:
            self._set_status(pod, phase="Running", podIP="127.0.0.1", hostIP="127.0.0.1",
                             conditions=[scheduled, {"type": "Ready", "status": "False"}])
            ready = False
            failures = 0
            assert self._session is not None
            while proc.returncode is None and not self._closing:
                current = self.store.get(POD, pod["metadata"]["namespace"], pod["metadata"]["name"])
                if current is not None and current["metadata"].get("deletionTimestamp"):
                    await self._stop_gracefully(current, proc)
                    return
                try:
                    async with self._session.get(url, timeout=probe_timeout) as resp:
                        passed = resp.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    passed = False
                failures = 0 if passed else failures + 1
                now_ready = passed or (ready and failures < failure_threshold)
                if now_ready != ready:
                    ready = now_ready
                    self._set_status(pod, conditions=[scheduled, {"type": "Ready",
                                                                  "status": str(ready)}])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 0.05)
            self._set_status(pod, phase="Failed", conditions=[scheduled, {"type": "Ready",
                                                                          "status": "False"}])
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 3)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()

    async def _stop_gracefully(self, pod: Obj, proc: asyncio.subprocess.Process) -> None:
        self._set_status(pod, conditions=[{"type": "PodScheduled", "status": "True"},
                                          {"type": "Ready", "status": "False"}])
        self.sigterm_at[pod["metadata"]["name"]] = time.monotonic()
        proc.terminate()
        # Capped: a test should not wait a production grace period for a stuck process.
        grace_s = min(float(pod["metadata"].get("deletionGracePeriodSeconds", 30)), 10.0)
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        current = self.store.get(POD, pod["metadata"]["namespace"], pod["metadata"]["name"])
        if current is not None and current["metadata"]["uid"] == pod["metadata"]["uid"]:
            self.store.delete(POD, pod["metadata"]["namespace"], pod["metadata"]["name"])

    def _sync_status(self, deploy: Obj) -> None:
        pods = self._owned_pods(deploy)
        ready = sum(1 for p in pods if _ready(p))
        status: Obj = {"observedGeneration": deploy["metadata"].get("generation", 1)}
        # The real controller omits zero counts; readers must treat a missing field as 0.
        for key, value in (("replicas", len(pods)), ("readyReplicas", ready),
                           ("availableReplicas", ready), ("updatedReplicas", len(pods)),
                           ("unavailableReplicas", len(pods) - ready)):
            if value:
                status[key] = value
        if status != deploy.get("status"):
            self.store.replace(DEPLOY, deploy["metadata"]["namespace"], deploy["metadata"]["name"],
                               {**deploy, "status": status}, subresource="status", check_rv=False)

    def _sync_slices(self, svc: Obj) -> None:
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        selector = svc["spec"].get("selector")
        if not selector:
            return
        sel = parse_selector(",".join(f"{k}={v}" for k, v in selector.items()))
        by_port: dict[int, list[Obj]] = {}
        for pod in self.store.list(POD, ns):
            if selector_matches(sel, pod["metadata"].get("labels") or {}) and \
                    (pod.get("status") or {}).get("podIP"):
                by_port.setdefault(_port(pod), []).append(pod)
        port_name = ((svc["spec"].get("ports") or [{}])[0]).get("name", "http")
        owner = {"apiVersion": "v1", "kind": "Service", "name": name, "uid": svc["metadata"]["uid"],
                 "controller": True, "blockOwnerDeletion": True}
        labels = {**(svc["metadata"].get("labels") or {}), "kubernetes.io/service-name": name,
                  "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
        wanted: set[str] = set()
        for port, pods in sorted(by_port.items()):
            slice_name = f"{name}-{port}"
            wanted.add(slice_name)
            endpoints = [{"addresses": [p["status"]["podIP"]],
                          "conditions": {"ready": _ready(p) and not _terminating(p),
                                         "serving": _ready(p), "terminating": _terminating(p)},
                          "targetRef": {"kind": "Pod", "name": p["metadata"]["name"], "namespace": ns,
                                        "uid": p["metadata"]["uid"]},
                          "nodeName": p["spec"].get("nodeName")} for p in pods]
            body: Obj = {"metadata": {"name": slice_name, "labels": labels, "ownerReferences": [owner]},
                    "addressType": "IPv4", "endpoints": endpoints,
                    "ports": [{"name": port_name, "port": port, "protocol": "TCP"}]}
            old = self.store.get(SLICE, ns, slice_name)
            if old is None:
                self.store.create(SLICE, ns, body)
            else:
                meta = {**old["metadata"], **body["metadata"]}
                self.store.replace(SLICE, ns, slice_name, {**old, **body, "metadata": meta},
                                   check_rv=False)
        for old in self.store.list(SLICE, ns, f"kubernetes.io/service-name={name}"):
            if old["metadata"]["name"] not in wanted:
                self.store.delete(SLICE, ns, old["metadata"]["name"])
