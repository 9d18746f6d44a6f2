"""Replica processes end with their parent, and a replica that cannot start says why.

Real processes throughout: a parent running the real local backend (or the pool manager, or
`zeroserve up`) is SIGKILLed and its children must go; failing replicas are real commands.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from autoscaler.backends import local_spawn
from autoscaler.backends.local import LocalBackend
from tests.conftest import ROOT, free_port
from zeroserve.spec import parse_specs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="parent-death signals are Linux only")

IRIS = "kind: ModelService\nmetadata: {name: iris}\nspec: {runtime: {model: iris}}\n"

# The parent: the real backend starts one iris replica, reports its pid and port, then waits to be
# killed. The loop is the one `zeroserve up` runs (uvloop) or asyncio's own.
PARENT = """
import asyncio, sys
from prometheus_client import CollectorRegistry
from autoscaler.backends.local import LocalBackend
from zeroserve.spec import parse_specs

async def main() -> None:
    b = LocalBackend(registry=CollectorRegistry(), stop_grace_s=5)
    await b.start()
    b.register(parse_specs(%(spec)r)[0])
    await b.scale("iris", 1)
    while b.ready_replicas("iris") == 0:
        await asyncio.sleep(0.02)
    r = b.status()["iris"]["replicas"][0]
    print(r["pid"], r["port"], flush=True)
    await asyncio.sleep(600)

%(run)s(main())
"""

# The parent for the warm pool: its "python" is a script that execs `sleep`, enough to see the
# pool process end with its parent (a real pool process needs torch).
POOL_PARENT = """
import asyncio
from autoscaler.backends.local_replica import free_port
from autoscaler.backends.pool import PoolManager

async def main() -> None:
    pool = PoolManager(free_port=free_port, python=%(python)r, warm_timeout_s=600)
    pool.want((), 1)
    while not pool.procs:
        await asyncio.sleep(0.02)
    print(pool.procs[0].process.pid, 0, flush=True)
    await asyncio.sleep(600)

import uvloop
uvloop.run(main())
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"   # a zombie serves nothing
    except (ProcessLookupError, FileNotFoundError):
        return False


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _reap(pid: int) -> None:
    """A child the test failed to see end must not outlive it (it leads its own session)."""
    if pid and _alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _kill_parent_and_check(code: str, out: Path) -> None:
    # The parent writes to a file, not a pipe: a child that survives holds the pipe open, and
    # waiting for it would hang the test instead of failing it.
    with out.open("wb") as f:
        parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=f,
                                  start_new_session=True)
    child = port = 0
    try:
        deadline = time.monotonic() + 60
        while not out.read_text().endswith("\n"):
            assert parent.poll() is None, f"the parent exited {parent.returncode} early"
            assert time.monotonic() < deadline, "the parent did not start its child in 60 s"
            time.sleep(0.05)
        child, port = map(int, out.read_text().split())
        assert _alive(child)
        parent.kill()
        parent.wait()
        assert _gone(child, 15), f"child {child} still runs 15 s after its parent was killed"
        if port:
            assert not _listening(port)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        _reap(child)


@pytest.mark.parametrize("run", ["asyncio.run", "__import__('uvloop').run"], ids=["asyncio", "uvloop"])
def test_a_replica_ends_when_its_parent_is_killed(run: str, tmp_path: Path) -> None:
    _kill_parent_and_check(PARENT % {"spec": IRIS, "run": run}, tmp_path / "parent.out")


def test_a_pool_process_ends_when_its_parent_is_killed(tmp_path: Path) -> None:
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\nexec sleep 600\n")
    fake_python.chmod(0o755)
    _kill_parent_and_check(POOL_PARENT % {"python": str(fake_python)}, tmp_path / "parent.out")


def test_a_child_whose_parent_died_before_prctl_exits_instead_of_running() -> None:
    # The hook expects this process as the parent; run it in a grandchild, whose parent is
    # another process, which is what a child sees when its parent died before prctl ran.
    hook = local_spawn.parent_death_hook()
    assert hook is not None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:                              # the intermediate process
        try:
            said = str(subprocess.run(["sleep", "30"], preexec_fn=hook, timeout=20).returncode)
        except BaseException as e:            # report anything, never return into pytest
            said = repr(e)
        os.write(write_end, said.encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as f:
        assert f.read() == b"1"


def test_zeroserve_up_killed_with_sigkill_takes_its_replica_with_it(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(IRIS.replace("spec: {", "spec: {scaling: {initialScale: 1, minReplicas: 1}, "))
    admin = free_port()
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen([sys.executable, "-m", "zeroserve", "up", "-f", str(spec),
                           "--port", str(free_port()), "--admin-port", str(admin)],
                          cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    pid = port = 0
    try:
        deadline = time.monotonic() + 60
        while not pid:
            assert time.monotonic() < deadline and up.poll() is None, \
                (tmp_path / "up.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=5) as r:
                    iris = json.load(r)["models"]["iris"]
            except OSError:
                iris = {}
            if iris.get("ready"):
                pid, port = iris["replicas"][0]["pid"], iris["replicas"][0]["port"]
            time.sleep(0.1)
        up.kill()
        up.wait()
        assert _gone(pid, 15), "the replica outlived `zeroserve up` by 15 s"
        assert not _listening(port)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        _reap(pid)
        log.close()


# --- failures in status -----------------------------------------------------------------------


@pytest.fixture
async def backend(registry: CollectorRegistry) -> AsyncIterator[LocalBackend]:
    b = LocalBackend(registry=registry, stop_grace_s=2)
    await b.start()
    yield b
    await b.close()


def _spec(runtime: str, name: str = "bad") -> Any:
    return parse_specs(f"kind: ModelService\nmetadata: {{name: {name}}}\nspec: {{runtime: {runtime}}}")[0]


async def _until(b: LocalBackend, model: str, predicate: Callable[[dict[str, Any]], bool],
                 timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        st: dict[str, Any] = b.status()[model]
        if predicate(st):
            return st
        assert time.monotonic() < deadline, f"timed out; last status {st}"
        await asyncio.sleep(0.02)


def _failure_logs(caplog: pytest.LogCaptureFixture, model: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("autoscaler.backends.local") and r.levelno == logging.ERROR
            and f"model={model} " in r.getMessage()]


async def test_a_builtin_model_that_cannot_load_reports_exit_2_and_its_stderr(
        backend: LocalBackend, caplog: pytest.LogCaptureFixture) -> None:
    # The spec accepts any module:Class; the server exits 2 when it cannot import it.
    backend.register(_spec('{model: "nosuchmodel.models:Missing"}'))
    await backend.scale("bad", 1)
    st = await _until(backend, "bad", lambda s: s["crashes"] >= 2)
    failure = st["last_failure"]
    assert st["ready"] == 0 and st["desired"] == 1
    assert failure["exit_code"] == 2
    assert failure["reason"] == "exited with code 2 before it was ready"
    assert "nosuchmodel" in failure["stderr_tail"]
    assert failure["replica"].startswith("bad-")
    json.dumps(st)                            # the admin /status answer is JSON
    # Two failures or more, the same each time: logged once, with the replica's last words.
    logs = _failure_logs(caplog, "bad")
    assert len(logs) == 1, logs
    assert "nosuchmodel" in logs[0] and "exited with code 2" in logs[0]


async def test_false_as_a_command_reports_exit_1_and_no_output(backend: LocalBackend) -> None:
    backend.register(_spec('{command: ["false"]}'))
    await backend.scale("bad", 1)
    failure = (await _until(backend, "bad", lambda s: s["crashes"] >= 1))["last_failure"]
    assert failure["exit_code"] == 1 and failure["stderr_tail"] == ""
    assert failure["reason"] == "exited with code 1 before it was ready"


async def test_a_command_that_cannot_be_found_is_a_failure_without_exit_code(
        backend: LocalBackend) -> None:
    backend.register(_spec('{command: ["/nonexistent/zeroserve-replica"]}'))
    await backend.scale("bad", 1)
    failure = (await _until(backend, "bad", lambda s: s["crashes"] >= 1))["last_failure"]
    assert failure["exit_code"] is None
    assert failure["reason"].startswith("could not start:") and "nonexistent" in failure["reason"]


async def test_the_stderr_tail_is_bounded_and_starts_at_a_whole_line(backend: LocalBackend) -> None:
    loud = "for i in $(seq 1 2000); do echo \"line $i of the replica's complaint\" >&2; done; exit 3"
    backend.register(_spec(f"{{command: [sh, -c, {json.dumps(loud)}]}}"))
    await backend.scale("bad", 1)
    tail = (await _until(backend, "bad", lambda s: s["crashes"] >= 1))["last_failure"]["stderr_tail"]
    assert 1500 < len(tail.encode()) <= local_spawn.TAIL_LIMIT_BYTES
    lines = tail.splitlines()
    assert lines[0].startswith("line ") and lines[-1] == "line 2000 of the replica's complaint"


async def test_each_distinct_failure_is_logged_once(
        backend: LocalBackend, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    marker = tmp_path / "tried"
    script = (f"if [ -e {marker} ]; then echo 'second and later' >&2; exit 5; "
              f"else touch {marker}; echo 'first try' >&2; exit 4; fi")
    backend.register(_spec(f"{{command: [sh, -c, {json.dumps(script)}]}}"))
    await backend.scale("bad", 1)
    st = await _until(backend, "bad", lambda s: s["crashes"] >= 3)
    assert st["last_failure"]["exit_code"] == 5
    logs = _failure_logs(caplog, "bad")
    assert len(logs) == 2, logs
    assert "code 4" in logs[0] and "first try" in logs[0]
    assert "code 5" in logs[1] and "second and later" in logs[1]


async def test_a_ready_replica_clears_the_failure(backend: LocalBackend) -> None:
    backend.register(_spec("{command: [sh, -c, 'echo broken >&2; exit 7']}", name="iris"))
    await backend.scale("iris", 1)
    st = await _until(backend, "iris", lambda s: s["crashes"] >= 1)
    assert st["last_failure"]["exit_code"] == 7
    backend.register(parse_specs(IRIS)[0])    # the spec is fixed; the next restart uses it
    st = await _until(backend, "iris", lambda s: s["ready"] == 1)
    assert st["crashes"] == 0 and st["last_failure"] is None


async def test_a_replica_killed_while_serving_is_logged_as_such(
        backend: LocalBackend, caplog: pytest.LogCaptureFixture) -> None:
    backend.register(parse_specs(IRIS)[0])
    await backend.scale("iris", 1)
    pid = (await _until(backend, "iris", lambda s: s["ready"] == 1))["replicas"][0]["pid"]
    os.kill(pid, signal.SIGKILL)
    await _until(backend, "iris", lambda s: s["ready"] == 1 and s["replicas"][0]["pid"] != pid)
    logs = _failure_logs(caplog, "iris")
    assert len(logs) == 1 and "killed by SIGKILL while serving" in logs[0], logs


async def test_a_scale_down_is_not_a_failure(backend: LocalBackend) -> None:
    backend.register(parse_specs(IRIS)[0])
    await backend.scale("iris", 1)
    await _until(backend, "iris", lambda s: s["ready"] == 1)
    await backend.scale("iris", 0)
    st = await _until(backend, "iris", lambda s: not s["replicas"])
    assert st["crashes"] == 0 and st["last_failure"] is None
