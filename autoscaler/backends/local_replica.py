"""One local replica process: its record, artifacts, command line, environment, readiness and stop."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import re
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from autoscaler.backends.base import Endpoint
from autoscaler.backends.local_spawn import OutputTail
from autoscaler.backends.pool import PoolProc
from zeroserve.spec import ModelService

log = logging.getLogger(__name__)


_RECENT_PORTS: collections.deque[int] = collections.deque(maxlen=256)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now. The kernel may hand the same one out again before the replica that got it
    has bound it (two replicas starting together), so ports given out recently are skipped."""
    port = 0
    for _ in range(50):
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _RECENT_PORTS:
            break
    _RECENT_PORTS.append(port)
    return port


@dataclass
class ReplicaProc:
    id: str
    model: str
    port: int
    gpus: tuple[int, ...]
    process: asyncio.subprocess.Process | None = None
    ready: bool = False
    stopping: bool = False
    started_at: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    pool_member: PoolProc | None = None
    released: asyncio.Event = field(default_factory=asyncio.Event)
    output: OutputTail = field(default_factory=OutputTail)

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.id, "127.0.0.1", self.port)


class StartFailed(Exception):
    """The replica exited, or never became ready, before it served."""


@dataclass(frozen=True, slots=True)
class ReplicaFailure:
    """Why the last replica of a model stopped without being asked to, for status and logs."""

    replica: str
    reason: str                     # "exited with code 2 before it was ready", ...
    exit_code: int | None           # None: no process exited (never spawned, or timed out)
    stderr_tail: str                # its last stderr lines, at most local_spawn.TAIL_LIMIT_BYTES
    at_unix: float

    def as_dict(self) -> dict[str, Any]:
        return {"replica": self.replica, "reason": self.reason, "exit_code": self.exit_code,
                "stderr_tail": self.stderr_tail, "at_unix": self.at_unix}

    def signature(self) -> tuple[str, int | None, str]:
        """What makes two failures "the same" for logging: the exit code, and the reason and last
        stderr line with digits blanked (timestamps, pids and ports differ between attempts)."""
        lines = self.stderr_tail.splitlines()
        last = re.sub(r"\d+", "#", lines[-1]) if lines else ""
        return re.sub(r"\d+", "#", self.reason), self.exit_code, last


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


@dataclass
class ModelState:
    svc: ModelService
    desired: int = 0
    replicas: list[ReplicaProc] = field(default_factory=list)
    version: int = 0
    crashes: int = 0                        # drives the restart backoff; reset by a scale from 0
    failures_since_ready: int = 0           # what status reports; reset only by a ready replica
    last_failure: ReplicaFailure | None = None
    logged_failure: tuple[str, int | None, str] | None = None
    last_phases: dict[str, float] = field(default_factory=dict)
    pending_reason: str | None = None
    last_used: float = 0.0
    last_load_source: str | None = None     # pooled replicas: "disk" or "parked"


def record_failure(state: ModelState, failure: ReplicaFailure) -> float:
    """Keep `failure` for status and log it if it differs from the last one logged (a model
    that can never start fails the same way every attempt); returns the restart backoff."""
    state.last_failure = failure
    state.failures_since_ready += 1
    state.crashes += 1
    delay = min(30.0, 0.5 * 2.0 ** (state.crashes - 1))
    if failure.signature() != state.logged_failure:
        state.logged_failure = failure.signature()
        last_line = failure.stderr_tail.splitlines()[-1:] or ["(no stderr)"]
        log.error("replica failed model=%s replica=%s: %s; last stderr line: %s; "
                  "restarting in %.1fs (failure %d, repeats of it are not logged)",
                  state.svc.name, failure.replica, failure.reason, last_line[0], delay,
                  state.failures_since_ready)
    else:
        log.debug("replica failed again the same way model=%s replica=%s; restarting in "
                  "%.1fs (failure %d)", state.svc.name, failure.replica, delay,
                  state.failures_since_ready)
    return delay


async def artifacts_dir(svc: ModelService, replica: ReplicaProc, work_dir: Path,
                        cache: Any | None) -> Path | None:
    """Where the replica finds its artifacts; None when the spec names none (a builtin model
    then uses what it ships with)."""
    if not svc.storage_uri:
        return None
    if svc.storage_uri.startswith(("file://", "pvc://")) and cache is None:
        return Path(svc.storage_uri.split("://", 1)[1])
    from runtime.storage import materialize

    dest = work_dir / replica.id
    result = await materialize(svc.storage_uri, dest, cache)
    log.info("artifacts for model=%s: cache %s, %d bytes in %.3fs", svc.name,
             "hit" if result.cache_hit else "miss", result.bytes, result.seconds)
    return dest


def command(svc: ModelService, replica: ReplicaProc, model_dir: Path | None, *, work_dir: Path,
            python: str) -> list[str]:
    rt = svc.runtime
    if model_dir is None and (rt.kind == "command" or "{model_dir}" in " ".join(rt.args)):
        model_dir = work_dir / replica.id     # an empty directory of its own
        model_dir.mkdir(parents=True, exist_ok=True)
    values = {"port": str(replica.port), "model_dir": str(model_dir), "model_name": svc.name,
              "host": "127.0.0.1"}
    if rt.kind == "command":
        return [part.format(**values) for part in (*rt.command, *rt.args)]
    argv = [python, "-m", "zeroserve", "serve", "--model-name", svc.name,
            "--port", str(replica.port), "--host", "127.0.0.1"]
    if model_dir is not None:
        argv += ["--model-dir", str(model_dir)]
    if rt.kind == "hf":
        argv += ["--runtime", "hf"]
    else:
        argv += ["--model", rt.model or svc.name, "--load-time-s", str(rt.load_time_s),
                 "--token-latency-s", str(rt.token_latency_s)]
    return argv + [part.format(**values) for part in rt.args]


def environment(svc: ModelService, replica: ReplicaProc) -> dict[str, str]:
    env = dict(os.environ)
    env.update(svc.runtime.env)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, replica.gpus))
    env["ZEROSERVE_MODEL_NAME"] = svc.name
    env["PORT"] = str(replica.port)
    return env


async def wait_ready(session: aiohttp.ClientSession | None, svc: ModelService, replica: ReplicaProc, *,
                     clock: Callable[[], float], probe_interval_s: float) -> float | None:
    """Probe readiness; returns when the server first answered (listening), None when the
    replica is being stopped. Raises StartFailed when it exits or stays unready too long."""
    assert session is not None and replica.process is not None
    url = f"http://127.0.0.1:{replica.port}{svc.runtime.readiness_path}"
    deadline = clock() + svc.runtime.ready_timeout_s
    listening_at: float | None = None
    while not replica.stopping:
        if replica.process.returncode is not None:
            raise StartFailed(f"{describe_exit(replica.process.returncode)} before it was ready")
        if clock() > deadline:
            raise StartFailed(f"not ready after {svc.runtime.ready_timeout_s:.0f}s")
        try:
            async with session.get(url) as resp:
                if listening_at is None:
                    listening_at = clock()
                if resp.status == 200:
                    return listening_at
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(probe_interval_s)
    return None


async def terminate(replica: ReplicaProc, grace_s: float) -> None:
    """SIGTERM the replica's process group; SIGKILL it when it outlives the grace period."""
    proc = replica.process
    if proc is None or proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        log.warning("replica did not stop in %.0fs, killing replica=%s", grace_s, replica.id)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
