"""The activator's data path vs nginx as a reverse proxy, in front of the same fast backend.

Runs, all on 127.0.0.1 and each with one worker: a backend (nginx `return 200` with a small JSON
body), nginx proxying to it (upstream keepalive), the activator fast path, the aiohttp path, and the
fast path with one worker per CPU (SO_REUSEPORT). wrk drives each in turn at the same connection
count and duration, for several interleaved rounds (the median is reported, as the machine is
shared, ratios are taken within a round and then the median); a one-connection pass measures
the latency each hop adds. Prints one JSON object.
  python bench/proxy.py [--connections 32] [--seconds 3] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PATH = "/v2/models/m/infer"
BACKEND_BODY = '{"model_name": "m", "outputs": [{"name": "y", "data": [1]}]}'


def say(msg: str) -> None:
    print(f"[bench/proxy] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nginx_conf(prefix: Path, server: str) -> str:
    temp = "".join(f"  {kind}_temp_path {prefix}/{kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
{temp}  keepalive_requests 10000000;
{server}
}}
"""


def start_nginx(tmp: Path, name: str, server: str) -> subprocess.Popen[bytes]:
    prefix = tmp / name
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, server))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return subprocess.Popen([nginx, "-c", str(conf), "-p", str(prefix)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process for port {port} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if m is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(port: int, connections: int, seconds: int, threads: int = 2) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency",
         f"http://127.0.0.1:{port}{PATH}"], capture_output=True, text=True, timeout=seconds + 30)
    text = out.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if rps is None:
        raise RuntimeError(f"wrk failed: {text}{out.stderr}")
    done = re.search(r"(\d+) requests in", text)
    result = {"rps": float(rps.group(1)), "requests": float(done.group(1)) if done else 0.0}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.M)
        result[f"p{pct}_ms"] = _ms(m.group(1)) if m else float("nan")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(r"Socket errors: (.*)", text)
    if errors or socket_errors:
        found = [m.group(0) for m in (errors, socket_errors) if m is not None]
        say(f"port {port}: {'; '.join(found)}")
    result["non2xx"] = float(errors.group(1)) if errors else 0.0
    return result


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its descendants."""
    total = 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        return total
    return total + sum(cpu_s(child) for child in children)


def serve_aiohttp(port: int, backend: int) -> None:
    """The aiohttp data path over the same static endpoint set (run as a child process)."""
    import uvloop
    from aiohttp import web

    from activator.app import build_app
    from activator.workers import parse_static, static_activator

    uvloop.install()

    async def run() -> None:
        activator = static_activator(parse_static([f"m=http://127.0.0.1:{backend}"]))
        runner = web.AppRunner(build_app(activator), handler_cancellation=True, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
        await asyncio.Event().wait()

    asyncio.run(run())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--seconds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--serve-aiohttp", nargs=2, type=int, metavar=("PORT", "BACKEND"),
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_aiohttp:
        serve_aiohttp(*args.serve_aiohttp)
        return 0
    if shutil.which("wrk") is None:
        say("wrk is not on PATH")
        return 1
    procs: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="zs-bench-proxy-"))
    ports = {name: free_port() for name in ("direct", "nginx", "activator", "aiohttp", "multi")}
    backend = ports["direct"]
    workers = os.cpu_count() or 1
    try:
        procs.append(start_nginx(tmp, "backend", f"""  server {{
    listen 127.0.0.1:{backend} backlog=4096;
    location / {{ default_type application/json; return 200 '{BACKEND_BODY}'; }}
  }}"""))
        procs.append(start_nginx(tmp, "proxy", f"""  upstream backend {{
    server 127.0.0.1:{backend}; keepalive 128;
  }}
  server {{
    listen 127.0.0.1:{ports['nginx']} backlog=4096;
    location / {{ proxy_pass http://backend; proxy_http_version 1.1;
                 proxy_set_header Connection ""; proxy_buffering on; }}
  }}"""))
        static = ["--static", f"m=http://127.0.0.1:{backend}"]
        fast = [sys.executable, "-m", "activator.fastpath", *static]
        procs.append(subprocess.Popen([*fast, "--port", str(ports["activator"])], cwd=REPO,
                                      stdout=subprocess.DEVNULL))
        procs.append(subprocess.Popen([*fast, "--port", str(ports["multi"]), "--workers", str(workers)],
                                      cwd=REPO, stdout=subprocess.DEVNULL))
        procs.append(subprocess.Popen([sys.executable, __file__, "--serve-aiohttp",
                                       str(ports["aiohttp"]), str(backend)], cwd=REPO))
        for name, port in ports.items():
            wait_port(port, procs[0] if name == "direct" else procs[-1] if name == "aiohttp" else procs[1])
        time.sleep(0.5)
        for port in ports.values():   # warm pools and caches
            wrk(port, args.connections, 1)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in ports}
        pids = {"direct": procs[0].pid, "nginx": procs[1].pid, "activator": procs[2].pid,
                "multi": procs[3].pid, "aiohttp": procs[4].pid}
        names = list(ports)
        for r in range(args.rounds):
            # Alternate the order so that no target always runs right after the same neighbour.
            for name in names if r % 2 == 0 else reversed(names):
                pid = pids[name]
                before = cpu_s(pid)
                run = wrk(ports[name], args.connections, args.seconds)
                run["cpu_us_per_req"] = (cpu_s(pid) - before) * 1e6 / max(run["requests"], 1.0)
                runs[name].append(run)
                say(f"round {r + 1} {name}: {runs[name][-1]['rps']:.0f} req/s")
        low: dict[str, list[dict[str, float]]] = {name: [] for name in ("direct", "nginx", "activator")}
        for _ in range(args.rounds):
            for name in low:
                low[name].append(wrk(ports[name], 1, 2, threads=1))
        say("low-load p50 " + ", ".join(
            f"{n}={statistics.median(x['p50_ms'] for x in v):.3f}ms" for n, v in low.items()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    def med(name: str, key: str, source: dict[str, list[dict[str, float]]] = runs) -> float:
        return round(statistics.median(x[key] for x in source[name]), 3)

    def ratio(name: str) -> float:
        return round(statistics.median(
            a["rps"] / n["rps"] for a, n in zip(runs[name], runs["nginx"], strict=True)), 3)

    direct_p50 = med("direct", "p50_ms", low)
    activator_p50 = med("activator", "p50_ms", low)
    result = {
        "connections": args.connections,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "direct_rps": med("direct", "rps"),
        "nginx_rps": med("nginx", "rps"),
        "activator_rps": med("activator", "rps"),
        "aiohttp_path_rps": med("aiohttp", "rps"),
        "activator_multi_rps": med("multi", "rps"),
        "activator_multi_workers": workers,
        # Per-round ratios, then the median: a neighbour's load burst hits both sides of a round.
        "ratio_vs_nginx": ratio("activator"),
        "aiohttp_ratio_vs_nginx": ratio("aiohttp"),
        "multi_ratio_vs_nginx": ratio("multi"),
        "direct_p50_ms": direct_p50,
        "nginx_p50_ms": med("nginx", "p50_ms", low),
        "activator_p50_ms": activator_p50,
        "added_p50_ms": round(activator_p50 - direct_p50, 3),
        "nginx_added_p50_ms": round(med("nginx", "p50_ms", low) - direct_p50, 3),
        # CPU time per request of each proxy process (tree): less sensitive to a busy machine.
        "nginx_cpu_us_per_req": med("nginx", "cpu_us_per_req"),
        "activator_cpu_us_per_req": med("activator", "cpu_us_per_req"),
        "aiohttp_cpu_us_per_req": med("aiohttp", "cpu_us_per_req"),
        "activator_p99_ms": med("activator", "p99_ms"),
        "nginx_p99_ms": med("nginx", "p99_ms"),
        "activator_loaded_p50_ms": med("activator", "p50_ms"),
        "nginx_loaded_p50_ms": med("nginx", "p50_ms"),
        "non2xx": sum(x["non2xx"] for v in runs.values() for x in v),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
