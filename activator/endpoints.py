"""The activator's table of ready endpoints, fed by a backend (in-process) or a watch (cluster)."""

from __future__ import annotations

from collections.abc import Callable

from autoscaler.backends.base import EndpointSet


class EndpointTable:
    """Latest EndpointSet per model; each update is forwarded to whoever listens (the gates)."""

    def __init__(self) -> None:
        self.sets: dict[str, EndpointSet] = {}
        self._listeners: list[Callable[[str, EndpointSet], None]] = []

    def listen(self, callback: Callable[[str, EndpointSet], None]) -> None:
        self._listeners.append(callback)
        for model, eps in self.sets.items():
            callback(model, eps)

    def update(self, model: str, endpoints: EndpointSet) -> None:
        current = self.sets.get(model)
        if current is not None and endpoints.version and endpoints.version < current.version:
            return  # an older view arriving late must not resurrect a stopped replica
        self.sets[model] = endpoints
        for callback in self._listeners:
            callback(model, endpoints)

    def get(self, model: str) -> EndpointSet:
        return self.sets.get(model) or EndpointSet(model)
