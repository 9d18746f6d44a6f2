"""Run `zeroserve up` as a real subprocess and talk to it over 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, free_port


class Up:
    def __init__(self, spec: Path, *, argv0: list[str] | None = None, env: dict[str, str] | None = None,
                 extra: list[str] | None = None, log: Path | None = None) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        self.log = log or spec.with_suffix(".log")
        cmd = (argv0 or [sys.executable, "-m", "zeroserve"]) + [
            "up", "-f", str(spec), "--port", str(self.port), "--admin-port", str(self.admin_port),
            "--stop-grace", "5", "--drain", "5", *(extra or [])]
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
                                     start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"

    def wait_up(self, timeout_s: float = 60) -> None:
        start = time.monotonic()
        deadline = start + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"zeroserve up exited {self.proc.returncode}:\n{self.output()}")
            try:
                self.status()
                _report_slow("zeroserve up to answer", start, timeout_s)
                return
            except (OSError, http.client.HTTPException):  # refused, reset, or a slow answer
                time.sleep(0.1)
        raise AssertionError(f"zeroserve up did not start:\n{self.output()}")

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.admin + "/status", timeout=5) as r:
            data: dict[str, Any] = json.load(r)
            return data

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")[-6000:]

    def wait_for(self, predicate: Any, timeout_s: float, what: str) -> dict[str, Any]:
        start = time.monotonic()
        deadline = start + timeout_s
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                status = self.status()
            except (OSError, http.client.HTTPException):  # one slow answer on a loaded machine
                time.sleep(0.1)
                continue
            if predicate(status):
                _report_slow(what, start, timeout_s)
                return status
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; last status {status}\n{self.output()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode


def _report_slow(what: str, start: float, timeout_s: float) -> None:
    """Shown with the test's output: how close a wait came to its deadline."""
    waited_s = time.monotonic() - start
    if waited_s > min(5.0, timeout_s / 3):
        print(f"slow wait: {what} took {waited_s:.1f}s of {timeout_s}s", file=sys.stderr)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone as far as serving goes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False
