"""What the autoscaler needs from wherever replicas run: the `Backend` protocol.

Two implementations exist: `local` (processes on this machine) and `kubernetes` (Deployments).
The autoscaler is the only caller of `scale`, which makes it the single writer of replica counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from zeroserve.spec import ModelService


class BackendError(Exception):
    """A backend could not do what was asked (start, place, prefetch)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class EndpointSet:
    model: str
    ready: tuple[Endpoint, ...] = ()
    version: int = 0


EndpointCallback = Callable[[str, EndpointSet], None]


class Backend(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def register(self, svc: ModelService) -> None: ...

    def unregister(self, name: str) -> None: ...

    async def scale(self, model: str, replicas: int) -> None: ...

    async def prefetch(self, model: str) -> None: ...

    def ready_replicas(self, model: str) -> int: ...

    def endpoints(self, model: str) -> EndpointSet: ...

    def subscribe(self, callback: EndpointCallback) -> None: ...

    def status(self) -> dict[str, Any]: ...
