"""The emulator's kubelet stops what it started: a closing cluster leaves no pod process running."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fake_cluster import Launch
from k8s_harness import NS, Harness, eventually

from tests.e2e.harness import pid_alive

# A pod that answers readiness and, like a server draining, takes a while to exit on SIGTERM.
SLOW_TO_STOP = r"""
import http.server, os, signal, sys, time
def stop(*_):
    time.sleep(1.5)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Ready)
open(sys.argv[2], "w").write(str(os.getpid()))
server.serve_forever()
"""


async def test_close_waits_for_a_pod_slow_to_stop(k8s: Harness, tmp_path: Path) -> None:
    script, pid_file = tmp_path / "slow_to_stop.py", tmp_path / "pid"
    script.write_text(SLOW_TO_STOP)
    k8s.cluster.launcher = lambda pod, port: Launch(
        [sys.executable, str(script), str(port), str(pid_file)], dict(os.environ))
    container = {"name": "server", "image": "slow:1", "ports": [{"containerPort": 8080}],
                 "readinessProbe": {"httpGet": {"path": "/", "port": 8080}}}
    k8s.store.create("apps/v1/deployments", NS, {"metadata": {"name": "slow"}, "spec": {
        "replicas": 1, "selector": {"matchLabels": {"app": "slow"}},
        "template": {"metadata": {"labels": {"app": "slow"}}, "spec": {"containers": [container]}}}})
    await eventually(lambda: any(c["type"] == "Ready" and c["status"] == "True"
                                 for p in k8s.pods() for c in p["status"].get("conditions", [])),
                     what="the pod to be ready")
    pid = int(pid_file.read_text())
    await k8s.cluster.close()
    # Once cancelled, the kubelet waits (3 s) for its process after SIGTERM, then kills it; close()
    # used to cancel it again a second later, cutting that wait short and leaving the process.
    assert not pid_alive(pid), "the pod's process outlived the cluster"
