"""ModelHost: one model's lifecycle in the server (loading, readiness, in-flight, drain, timings)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from runtime.server.errors import (
    Draining,
    ModelFailure,
    ModelNotFound,
    ModelNotReady,
    ServerError,
    Unsupported,
)
from runtime.server.model import Arrays, GenerationParams, GenerativeModel, Model

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(slots=True)
class StartupTimes:
    """Unix timestamps of the cold-start phases; the differences are what a scale from zero costs."""

    process_start_unix: float
    imports_done_unix: float
    listening_unix: float | None = None
    load_started_unix: float | None = None
    loaded_unix: float | None = None

    def as_json(self) -> dict[str, float | None]:
        def since(t: float | None, origin: float | None) -> float | None:
            return None if t is None or origin is None else round(t - origin, 6)

        return {
            "process_start_unix": self.process_start_unix,
            "imports_s": since(self.imports_done_unix, self.process_start_unix),
            "listening_s": since(self.listening_unix, self.process_start_unix),
            "load_s": since(self.loaded_unix, self.load_started_unix),
            "ready_s": since(self.loaded_unix, self.process_start_unix),
        }


def in_daemon_thread(fn: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Run ``fn`` in a daemon thread. Unlike asyncio.to_thread (the default executor, whose threads
    interpreter exit joins), a SIGTERM during a long sync load or warm-up can then exit at once."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(outcome: tuple[T] | BaseException) -> None:
        if not done.done():  # the awaiting task was cancelled
            if isinstance(outcome, BaseException):
                done.set_exception(outcome)
            else:
                done.set_result(outcome[0])

    def target() -> None:
        outcome: tuple[T] | BaseException
        try:
            outcome = (fn(),)
        except BaseException as e:
            outcome = e
        try:
            loop.call_soon_threadsafe(settle, outcome)
        except RuntimeError:  # the loop is closed: nobody awaits this any more
            pass

    threading.Thread(target=target, name=name, daemon=True).start()
    return done


class ModelHost:
    def __init__(self, model: Model, times: StartupTimes) -> None:
        self.model = model
        self.name = model.name
        self.times = times
        self.state = "loading"  # loading -> ready -> draining; or loading -> failed
        self.in_flight = 0
        self.served = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def generative(self) -> bool:
        return isinstance(self.model, GenerativeModel) and (
            type(self.model).generate is not GenerativeModel.generate
        )

    async def load(self) -> None:
        self.times.load_started_unix = time.time()
        try:
            if inspect.iscoroutinefunction(self.model.load):
                await self.model.load()
            else:
                # A sync load runs in a thread so liveness keeps answering while weights are read.
                await in_daemon_thread(self.model.load, f"load-{self.name}")
        except asyncio.CancelledError:
            raise  # a drain during load: the state stays "draining"
        except BaseException:
            self.state = "failed"
            raise
        self.times.loaded_unix = time.time()
        if self.state == "loading":
            self.state = "ready"

    def start_drain(self) -> None:
        self.state = "draining"

    async def wait_idle(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def require(self, name: str) -> None:
        if name != self.name:
            raise ModelNotFound(
                f"model {name!r} is not served here (this server serves {self.name!r})", param="model"
            )

    def begin(self, name: str) -> None:
        """Admit one inference request (pair with :meth:`end`)."""
        self.require(name)
        if self.state == "draining":
            raise Draining("server is shutting down")
        if self.state != "ready":
            raise ModelNotReady(f"model {self.name!r} is not ready ({self.state})")
        self.in_flight += 1
        self._idle.clear()

    def end(self) -> None:
        self.in_flight -= 1
        self.served += 1
        if self.in_flight == 0:
            self._idle.set()

    async def predict(self, inputs: Arrays) -> Arrays:
        if not self.model.supports_tensors():
            raise Unsupported(f"model {self.name!r} takes no tensor inputs; use the OpenAI API")
        try:
            result = self.model.predict(inputs)
            if inspect.isawaitable(result):
                result = await result
        except ServerError:
            raise
        except Exception as e:
            log.exception("predict failed model=%s", self.name)
            raise ModelFailure(f"{type(e).__name__}: {e}") from e
        if not isinstance(result, Mapping) or not all(isinstance(k, str) for k in result):
            raise ModelFailure(
                f"predict() returned {type(result).__name__}, not a mapping of output name to array"
            )
        return result

    async def generate(self, prompt: str, params: GenerationParams) -> AsyncGenerator[str, None]:
        if not self.generative:
            raise Unsupported(f"model {self.name!r} is not a text generation model", param="model")
        assert isinstance(self.model, GenerativeModel)
        stream = self.model.generate(prompt, params)
        try:
            async for piece in stream:
                yield piece
        except ServerError:
            raise
        except Exception as e:
            log.exception("generate failed model=%s", self.name)
            raise ModelFailure(f"{type(e).__name__}: {e}") from e
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "startup": self.times.as_json(),
            "inference": {"in_flight": self.in_flight, "served": self.served},
        }
