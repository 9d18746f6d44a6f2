"""Helpers shared by the Kubernetes tests: the emulator harness, polling, RBAC checks."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from emulator import Access, ApiEmulator, Obj
from fake_cluster import FakeCluster

ROOT = Path(__file__).resolve().parents[2]
NS = "models"
MS = "serving.zeroserve.io/v1alpha1/modelservices"


@dataclass
class Harness:
    emu: ApiEmulator
    cluster: FakeCluster

    @property
    def store(self) -> Any:
        return self.emu.store

    def apply_model(self, name: str, spec: Obj, ns: str = NS) -> Obj:
        body = {"apiVersion": "serving.zeroserve.io/v1alpha1", "kind": "ModelService",
                "metadata": {"name": name}, "spec": spec}
        old = self.store.get(MS, ns, name)
        if old is None:
            return dict(self.store.create(MS, ns, body))
        return dict(self.store.replace(MS, ns, name, {**old, "spec": spec}, check_rv=False))

    def get(self, resource: str, name: str, ns: str = NS) -> Obj | None:
        obj = self.store.get(resource, ns, name)
        return None if obj is None else dict(obj)

    def expire_all_watches(self) -> None:
        """Compact history past every watcher's version and end all streams: each resume is a 410."""
        self.store.create("v1/configmaps", NS, {"metadata": {"generateName": "bump-"}})
        self.store.compact()
        self.store.expire_watches()

    def pods(self, ns: str = NS) -> list[Obj]:
        return list(self.store.list("v1/pods", ns))


def load_roles() -> dict[str, Obj]:
    docs = yaml.safe_load_all((ROOT / "manifests" / "rbac.yaml").read_text())
    return {d["metadata"]["name"]: d for d in docs if d and d["kind"] == "Role"}


def allowed(role: Obj, access: Access) -> bool:
    for rule in role["rules"]:
        names = rule.get("resourceNames")
        if (access.group in rule["apiGroups"] and access.resource in rule["resources"]
                and access.verb in rule["verbs"] and (not names or access.name in names)):
            return True
    return False


def role_of(identity: str) -> str | None:
    """Tests authenticate as autoscaler-* and activator-*; each must live within its Role."""
    for component in ("autoscaler", "activator"):
        if identity.startswith(component):
            return f"zeroserve-{component}"
    return None


def load_crd() -> Obj:
    docs = list(yaml.safe_load_all((ROOT / "manifests" / "crd.yaml").read_text()))
    return dict(docs[0])


async def eventually(check: Callable[[], Any], timeout_s: float = 60.0, what: str = "") -> Any:
    """Poll a condition of the outside world (processes, watches) until it holds. The default
    deadline is generous: many conditions wait for a process to start (its imports alone took
    10 s on an overloaded 2-core machine), and a deadline costs nothing while things work."""
    start = time.monotonic()
    deadline = start + timeout_s
    while True:
        value = check()
        if value:
            waited_s = time.monotonic() - start
            if waited_s > min(5.0, timeout_s / 3):  # shown with the test's output
                print(f"slow wait: {what or check} took {waited_s:.1f}s of {timeout_s}s", file=sys.stderr)
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or check}")
        await asyncio.sleep(0.02)
