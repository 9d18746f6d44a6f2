"""Start `zeroserve serve` as a real subprocess on a free port (test helper, not a test)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The space after the port: a line read while half-written must not yield a truncated port.
_LISTENING = re.compile(r"listening on http://[\d.]+:(\d+) ")


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text()

    def status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.status("/v2/health/ready") == 200:
                    return
            except OSError:  # a probe that timed out or was reset on a loaded machine: ask again
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.02)
        raise TimeoutError(f"server not ready in {timeout_s}s:\n{self.log()}")

    def stop(self, timeout_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def start_server(
    log_dir: Path, *args: str, ready: bool = True, extra_path: Path | None = None, timeout_s: float = 60.0
) -> ServerProcess:
    log_path = log_dir / f"server-{time.monotonic_ns()}.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), str(extra_path) if extra_path else "", env.get("PYTHONPATH", "")) if p
    )
    env.pop("PORT", None)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runtime.server.cli", "--port", "0", *args],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = _LISTENING.search(log_path.read_text())
        if match:
            server = ServerProcess(proc, int(match.group(1)), log_path)
            if ready:
                server.wait_ready(max(0.1, deadline - time.monotonic()))
            return server
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}:\n{log_path.read_text()}")
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    raise TimeoutError(f"server did not listen in {timeout_s}s:\n{log_path.read_text()}")
