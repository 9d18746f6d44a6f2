"""Measure a model server's cold start as a subprocess: `python -m runtime.server.coldstart`.

Each run spawns `python -m runtime.server.cli --port 0 --model M`, waits for readiness from the
outside, sends one inference request, reads the server's own phase timestamps from
``GET /v2/models/{name}/stats`` and stops it with SIGTERM. Prints one JSON object (medians and
all runs) on stdout; progress goes to stderr. Standard library only, so the measuring process
adds nothing to what it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO

_LISTENING = re.compile(rb"listening on http://[\d.]+:(\d+)")
_REQUESTS = {
    "iris": ("/v1/models/{name}:predict", {"instances": [[5.1, 3.5, 1.4, 0.2]]}),
    "tiny-llm": ("/v1/completions", {"model": "{name}", "prompt": "hello", "max_tokens": 1}),
}


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


def _post(url: str, body: Any) -> None:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()


def measure_once(model: str, extra: list[str], timeout_s: float) -> dict[str, float]:
    # The child writes its log through its own append-mode handle and we read through another: a
    # shared handle would share one file offset, and our seek(0) could make the child write over the
    # "listening on" line before we read it.
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "server.log"
        with open(log_path, "ab") as log_w, open(log_path, "rb") as log_r:
            return _measure(model, extra, timeout_s, log_w, log_r)


def _measure(
    model: str, extra: list[str], timeout_s: float, log_w: BinaryIO, log_r: BinaryIO
) -> dict[str, float]:
    spawned = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime.server.cli", "--port", "0", "--model", model, *extra],
        stdout=log_w,
        stderr=log_w,
    )
    seen = b""
    try:
        deadline = time.monotonic() + timeout_s
        port = None
        while port is None:
            seen += log_r.read()
            m = _LISTENING.search(seen)
            port = int(m.group(1)) if m else None
            if port is not None:
                break
            exited = proc.poll()
            if exited is not None or time.monotonic() > deadline:
                why = f"exited with {exited}" if exited is not None else f"no port after {timeout_s:.0f} s"
                raise RuntimeError(f"server did not start ({why}): {seen.decode(errors='replace')}")
            time.sleep(0.002)
        base = f"http://127.0.0.1:{port}"
        while _status(base + "/v2/health/ready") != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become ready")
            time.sleep(0.002)
        ready_seen = time.time()
        name = model
        path, body = _REQUESTS.get(model, ("", None))
        if body is not None:
            body = json.loads(json.dumps(body).replace("{name}", name))
            _post(base + path.format(name=name), body)
        answered = time.time()
        with urllib.request.urlopen(f"{base}/v2/models/{name}/stats", timeout=5) as r:
            startup = json.load(r)["startup"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return {
        "spawn_to_process_s": startup["process_start_unix"] - spawned,
        "imports_s": startup["imports_s"],
        "listening_s": startup["listening_s"],
        "load_s": startup["load_s"],
        "ready_s": startup["ready_s"],
        "spawn_to_ready_seen_s": ready_seen - spawned,
        "spawn_to_first_answer_s": answered - spawned,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model", action="append", help="iris | tiny-llm (repeatable; default both)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--load-time-s", default="0.5", help="passed to tiny-llm")
    p.add_argument("--timeout-s", type=float, default=60.0)
    args = p.parse_args(argv)
    result: dict[str, Any] = {"runs": args.runs, "python": sys.version.split()[0], "models": {}}
    try:
        result["load_average_before"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    for model in args.model or ["iris", "tiny-llm"]:
        extra = ["--load-time-s", args.load_time_s] if model == "tiny-llm" else []
        if model == "iris":
            extra = ["--model-dir", str(Path(__file__).resolve().parents[2] / "examples" / "iris")]
        runs = []
        for i in range(args.runs):
            runs.append(measure_once(model, extra, args.timeout_s))
            print(f"{model} run {i + 1}/{args.runs}: ready {runs[-1]['ready_s']:.3f}s", file=sys.stderr)
        result["models"][model] = {
            "median": {k: round(statistics.median(r[k] for r in runs), 4) for k in runs[0]},
            # On a shared machine the minimum is the closest to the uncontended cost.
            "min": {k: round(min(r[k] for r in runs), 4) for k in runs[0]},
            "all": [{k: round(v, 4) for k, v in r.items()} for r in runs],
        }
    try:
        result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
