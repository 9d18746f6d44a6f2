"""A stand-in for an external model server (Triton, a KServe runtime...): NOT zeroserve's server.

Standard library only (http.server), so it shares no code with runtime/server and proves that a
replica only has to "serve HTTP on a port and report readiness". It speaks the Open Inference v2
subset a router needs for one model that doubles its numeric input:

  GET  /v2/health/live                    200 once the process runs
  GET  /v2/health/ready                   503 for --startup-delay-s, then 200 (503 again on SIGTERM)
  GET  /v2/models/{name}                  metadata
  GET  /v2/models/{name}/ready
  POST /v2/models/{name}/infer            JSON tensors (FP32/FP64/INT*); output "output-0" = 2 * input

Every response carries ``X-Served-By: <replica id>`` so a test can tell replicas apart.

  python examples/external/standin_server.py --port 9000 --model-name doubler [--startup-delay-s 1]
                                             [--replica-id r1] [--infer-delay-s 0.1]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

NUMERIC = {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}


class State:
    def __init__(self, model: str, replica_id: str, ready_at: float, infer_delay_s: float) -> None:
        self.model = model
        self.replica_id = replica_id
        self.ready_at = ready_at
        self.infer_delay_s = infer_delay_s
        self.stopping = False

    @property
    def ready(self) -> bool:
        return not self.stopping and time.monotonic() >= self.ready_at


def flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [v for item in data for v in flatten(item)]
    return [data]


def make_handler(state: State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests start many of these
            return

        def reply(self, status: int, body: Any) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.send_header("X-Served-By", state.replica_id)
            self.end_headers()
            self.wfile.write(raw)

        def model_path(self, suffix: str) -> bool:
            return self.path == f"/v2/models/{state.model}{suffix}"

        def do_GET(self) -> None:
            if self.path == "/v2/health/live":
                self.reply(200, {"live": True})
            elif self.path == "/v2/health/ready" or self.model_path("/ready"):
                self.reply(200 if state.ready else 503, {"ready": state.ready})
            elif self.model_path(""):
                spec = {"datatype": "FP64", "shape": [-1]}
                self.reply(
                    200,
                    {
                        "name": state.model,
                        "versions": ["1"],
                        "platform": "standin",
                        "inputs": [{"name": "input-0", **spec}],
                        "outputs": [{"name": "output-0", **spec}],
                    },
                )
            elif self.path.startswith("/v2/models/"):
                self.reply(404, {"error": f"unknown model path {self.path}"})
            else:
                self.reply(404, {"error": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if not self.model_path("/infer"):
                self.reply(404, {"error": f"unknown model path {self.path}"})
                return
            if not state.ready:
                self.reply(503, {"error": "not ready"})
                return
            try:
                body = json.loads(raw)
                tensor = body["inputs"][0]
                if tensor["datatype"] not in NUMERIC:
                    raise ValueError(f"datatype {tensor['datatype']} is not numeric")
                values = [float(v) * 2 for v in flatten(tensor["data"])]
                shape = tensor["shape"]
            except (ValueError, KeyError, IndexError, TypeError) as e:
                self.reply(400, {"error": f"bad request: {e}"})
                return
            if state.infer_delay_s:
                time.sleep(state.infer_delay_s)
            out = {
                "model_name": state.model,
                "outputs": [{"name": "output-0", "datatype": "FP64", "shape": shape, "data": values}],
            }
            if "id" in body:
                out["id"] = body["id"]
            self.reply(200, out)

    return Handler


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="stand-in external v2 model server (not zeroserve's)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "9000")))
    p.add_argument("--model-name", default=os.environ.get("ZEROSERVE_MODEL_NAME", "doubler"))
    p.add_argument("--replica-id", default=f"standin-{os.getpid()}")
    p.add_argument("--startup-delay-s", type=float, default=0.0)
    p.add_argument("--infer-delay-s", type=float, default=0.0)
    args = p.parse_args(argv)

    state = State(
        args.model_name, args.replica_id, time.monotonic() + args.startup_delay_s, args.infer_delay_s
    )
    server = ThreadingHTTPServer((args.host, args.port), make_handler(state))
    server.daemon_threads = True

    def on_term(signum: int, frame: Any) -> None:
        state.stopping = True
        # shutdown() blocks until serve_forever returns, so it cannot run on the serving thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    print(
        f"standin listening on http://{args.host}:{server.server_address[1]} model={args.model_name}",
        file=sys.stderr,
        flush=True,
    )
    server.serve_forever(poll_interval=0.1)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
