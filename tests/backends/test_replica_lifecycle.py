"""Replica processes end with their parent.

Real processes throughout: a parent running the real local backend (or the pool manager, or
`zeroserve up`) is SIGKILLed and its children must go.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from autoscaler.backends import local_spawn
from tests.conftest import ROOT, free_port

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
