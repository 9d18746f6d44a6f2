"""`leader.LeaseStore` on a coordination.k8s.io/v1 Lease, through the backend's JSON API client."""

from __future__ import annotations

import calendar
import time
from typing import Any, Protocol

from autoscaler.backends.k8s_watch import KubeError, Obj
from autoscaler.leader import LeaseRecord

LEADER_URL = "serving.zeroserve.io/leader-url"


class JsonApi(Protocol):
    async def request(self, method: str, path: str, *, body: Any = None, patch: bool = False,
                      ok_missing: bool = False) -> Obj | None: ...


def _micro(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def _parse_micro(text: str | None) -> float:
    if not text:
        return 0.0
    head, _, frac = text.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{frac or 0}")


class KubernetesLeaseStore:
    """`leader.LeaseStore` on a coordination.k8s.io/v1 Lease."""

    def __init__(self, api: JsonApi, namespace: str, name: str) -> None:
        self.api = api
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.name = name

    @staticmethod
    def _record(obj: Obj) -> LeaseRecord:
        spec = obj.get("spec") or {}
        return LeaseRecord(
            holder=spec.get("holderIdentity") or "",
            lease_duration_s=float(spec.get("leaseDurationSeconds") or 0),
            acquire_time_s=_parse_micro(spec.get("acquireTime")),
            renew_time_s=_parse_micro(spec.get("renewTime")),
            transitions=int(spec.get("leaseTransitions") or 0),
            holder_address=(obj["metadata"].get("annotations") or {}).get(LEADER_URL, ""),
            version=obj["metadata"]["resourceVersion"])

    def _body(self, r: LeaseRecord) -> Obj:
        meta: Obj = {"name": self.name, "annotations": {LEADER_URL: r.holder_address}}
        if r.version:
            meta["resourceVersion"] = r.version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
                "spec": {"holderIdentity": r.holder,
                         "leaseDurationSeconds": max(1, round(r.lease_duration_s)),
                         "acquireTime": _micro(r.acquire_time_s), "renewTime": _micro(r.renew_time_s),
                         "leaseTransitions": r.transitions}}

    async def get(self) -> LeaseRecord | None:
        obj = await self.api.request("GET", f"{self.path}/{self.name}", ok_missing=True)
        return None if obj is None else self._record(obj)

    async def create(self, record: LeaseRecord) -> LeaseRecord | None:
        try:
            return self._record(await self.api.request("POST", self.path, body=self._body(record)) or {})
        except KubeError as e:
            if e.status == 409:
                return None
            raise

    async def update(self, record: LeaseRecord) -> LeaseRecord | None:
        try:
            obj = await self.api.request("PUT", f"{self.path}/{self.name}", body=self._body(record))
            return self._record(obj or {})
        except KubeError as e:
            if e.status in (404, 409):
                return None
            raise
