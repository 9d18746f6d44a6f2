"""The ModelService status subresource: rendered from what the backend sees, patched only on change.

A valid model's status carries its Deployment's replicas, pod conditions and last cold start; a
ModelService the parser rejects still gets a status, naming the errors (reason InvalidSpec), so the
user sees with `kubectl get` why nothing runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from autoscaler.backends.k8s_render import PodSummary, render_status, summarize_pods
from autoscaler.backends.k8s_watch import KubeError, Obj

if TYPE_CHECKING:
    from autoscaler.backends.kubernetes import ModelEntry
    from autoscaler.backends.kubernetes_api import KubeApi


class StatusWriter:
    def __init__(self, api: KubeApi, path: str, wall: Callable[[], float]) -> None:
        self.api = api
        self.path = path                         # the namespace's modelservices collection
        self.wall = wall
        self._invalid: dict[str, Obj] = {}       # name -> last status written for an invalid spec

    def forget(self, name: str) -> None:
        """The spec is valid again (or deleted): the next invalid status starts from the object."""
        self._invalid.pop(name, None)

    def _now(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.wall()))

    async def write(self, state: ModelEntry, deploy: Obj | None, summary: PodSummary, *,
                    invalid: bool) -> None:
        if not state.obj.get("metadata", {}).get("uid"):
            return  # not (yet) a stored ModelService: nothing to write status on
        desired = int(deploy["spec"].get("replicas", 1)) if deploy is not None else 0
        previous = state.last_status or (state.obj.get("status") or {})
        status = render_status(generation=int(state.obj["metadata"].get("generation", 1)),
                               deployment=state.deployment, desired=desired, pods=summary,
                               previous=previous, now_rfc3339=self._now(), cold_start=state.cold_start,
                               error=state.error,
                               error_reason="InvalidSpec" if invalid else "ReconcileError")
        if status == state.last_status:
            return
        await self._patch(state.svc.name, status)
        state.last_status = status

    async def write_invalid(self, name: str, obj: Obj, error: str) -> None:
        previous = self._invalid.get(name) or obj.get("status") or {}
        status = render_status(generation=int(obj["metadata"].get("generation", 1)), deployment="",
                               desired=0, pods=summarize_pods(()), previous=previous,
                               now_rfc3339=self._now(), cold_start=None, error=error,
                               error_reason="InvalidSpec")
        if status != self._invalid.get(name):
            await self._patch(name, status)
            self._invalid[name] = status

    async def _patch(self, name: str, status: Obj) -> None:
        try:
            await self.api.request("PATCH", f"{self.path}/{name}/status", body={"status": status},
                                   patch=True)
        except KubeError as e:
            if e.status != 404:  # deleted meanwhile: its DELETED event is on its way
                raise
