"""`zeroserve up`'s front door: bad arguments and specs it cannot run are refused before anything
starts; `--port 0` reports the ports it bound; a closed terminal (SIGHUP) stops it like Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.e2e.harness import Up, pid_alive
from zeroserve.up import main

IRIS = """
apiVersion: serving.zeroserve.io/v1alpha1
kind: ModelService
metadata: {name: iris}
spec:
  runtime: {model: iris}
  scaling: {initialScale: 1, minReplicas: 1}
"""
IMAGE_ONLY = """
apiVersion: serving.zeroserve.io/v1alpha1
kind: ModelService
metadata: {name: vllm}
spec: {runtime: {kind: command, image: vllm/vllm-openai, protocol: openai}}
"""


def test_bad_arguments_are_all_named_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "iris.yaml"
    spec.write_text(IRIS)
    assert main(["-f", str(spec), "--drain", "-5", "--stop-grace", "-1", "--workers", "0",
                 "--port", "70000"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "zeroserve up: --drain = -5.0, must be >= 0",
        "zeroserve up: --stop-grace = -1.0, must be >= 0",
        "zeroserve up: --port = 70000, must be a port (0-65535; 0 picks a free one)",
        "zeroserve up: --workers = 0, must be >= 1",
    ]


def test_a_model_defined_in_two_files_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(IRIS)
    b.write_text(IRIS.replace("minReplicas: 1", "minReplicas: 0"))
    assert main(["-f", str(a), "-f", str(b)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"zeroserve up: {b}: metadata.name = iris, is also defined in {a}"]


def test_an_image_without_a_command_is_refused_before_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "vllm.yaml"
    spec.write_text(IMAGE_ONLY)
    assert main(["-f", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "model vllm: spec.runtime has an image but no command" in err


def test_port_0_reports_the_bound_ports_and_sighup_stops_everything(tmp_path: Path) -> None:
    spec = tmp_path / "iris.yaml"
    spec.write_text(IRIS)
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zeroserve", "up", "-f", str(spec), "--port", "0", "--admin-port", "0",
             "--drain", "5", "--stop-grace", "5"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 60
        found = None
        while found is None:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            found = re.search(r"on http://127\.0\.0\.1:(\d+) — status http://127\.0\.0\.1:(\d+)/status",
                              log.read_text())
            time.sleep(0.05)
        port, admin_port = int(found.group(1)), int(found.group(2))
        assert port > 0 and admin_port > 0 and port != admin_port
        body = b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}'
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/iris:predict", body)
        with urllib.request.urlopen(request, timeout=60) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/status", timeout=10) as r:
            pids = [rep["pid"] for rep in json.load(r)["models"]["iris"]["replicas"]]
        assert pids and all(pid_alive(p) for p in pids)
        os.kill(proc.pid, signal.SIGHUP)  # what a closed terminal sends
        assert proc.wait(30) == 0, log.read_text()
        deadline = time.monotonic() + 15
        while any(pid_alive(p) for p in pids):
            assert time.monotonic() < deadline, f"replicas {pids} outlived zeroserve up"
            time.sleep(0.1)
        assert "stopping (draining requests, then replicas)" in log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


BROKEN = """
apiVersion: serving.zeroserve.io/v1alpha1
kind: ModelService
metadata: {name: broken}
spec:
  runtime:
    kind: command
    command: [PYTHON, -c, "import sys; print('weights missing at /models/x', file=sys.stderr); sys.exit(3)"]
  scaling: {initialScale: 1, minReplicas: 1}
"""


def test_status_says_why_a_model_cannot_start(tmp_path: Path) -> None:
    spec = tmp_path / "broken.yaml"
    spec.write_text(BROKEN.replace("PYTHON", sys.executable))
    up = Up(spec)
    try:
        up.wait_up()
        up.wait_for(lambda st: st["models"]["broken"]["crashes"] >= 1, 60, "a crash")
        out = subprocess.run([sys.executable, "-m", "zeroserve", "status", "--admin", up.admin],
                             capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].split()[-1] == "CRASHES"
        row = next(line.split() for line in lines if line.startswith("broken "))
        assert int(row[-1]) >= 1 and row[2] == "0"  # crashes counted, nothing ready
        assert any(line.startswith("broken: ") and "3" in line for line in lines), out.stdout
        assert "  | weights missing at /models/x" in lines, out.stdout
    finally:
        assert up.stop() == 0, up.output()
