"""Storage initializer vs curl: a >= 2 GiB model over HTTP (nginx), plus an S3 (moto) correctness pass.

Prints one JSON object on stdout; progress goes to stderr. Everything lives in one temp dir on the
same disk (model, nginx prefix, downloads, node cache) and is deleted at the end, nginx and moto too.
  python bench/storage.py [--gib 2.0] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import filecmp
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runtime.storage import NodeCache, materialize  # noqa: E402

MiB = 1 << 20


def say(msg: str) -> None:
    print(f"[bench/storage] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port}")


def make_model(root: Path, total_bytes: int, rng: np.random.Generator) -> list[Path]:
    """A few large shards and many small files (config, tokenizer pieces), in subfolders."""
    block = rng.bytes(16 * MiB)
    files: list[Path] = []
    small_total = 0
    for i in range(240):
        size = int(rng.integers(2 * 1024, 1 * MiB))
        p = root / ("tokenizer" if i % 3 == 0 else "extra") / f"part-{i:04d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.bytes(size))
        small_total += size
        files.append(p)
    large_each = (total_bytes - small_total) // 4 + 1
    for i in range(4):
        p = root / f"model-{i + 1:05d}-of-00004.safetensors"
        with open(p, "wb") as fh:
            left = large_each
            n = 0
            while left > 0:
                # Vary each block so no layer (page cache, nginx, disk) can dedupe the content.
                chunk = np.frombuffer(block, dtype=np.uint8) ^ np.uint8((i * 31 + n) % 251 + 1)
                fh.write(chunk.tobytes()[:left])
                left -= min(left, len(block))
                n += 1
        files.append(p)
    return files


def start_nginx(base: Path, docroot: Path, port: int) -> subprocess.Popen[bytes]:
    prefix = base / "nginx"
    (prefix / "logs").mkdir(parents=True)
    user = "user root;" if os.geteuid() == 0 else ""  # workers must be able to read the temp dir
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
{user}
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {docroot};
        location / {{ autoindex on; autoindex_format json; }}
    }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(prefix)], stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc


def children_cpu_s() -> float:
    """CPU seconds (user + sys) of finished child processes: steadier than wall time on a busy box."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_curl(files: list[Path], model: Path, url: str, out: Path) -> tuple[float, float]:
    """One curl process fetching the files one after another (its best sequential case)."""
    cfg = out.parent / "curl.cfg"
    lines = []
    for p in files:
        rel = p.relative_to(model).as_posix()
        lines.append(f'url = "{url}{rel}"\noutput = "{out / rel}"')
    cfg.write_text("\n".join(lines) + "\n")
    started, cpu = time.monotonic(), children_cpu_s()
    subprocess.run(["curl", "-sS", "--fail", "--create-dirs", "-K", str(cfg)], check=True)
    return time.monotonic() - started, children_cpu_s() - cpu


def run_zeroserve(
    uri: str, dest: Path, cache_dir: Path, env: dict[str, str] | None = None
) -> tuple[float, float]:
    started, cpu = time.monotonic(), children_cpu_s()
    cmd = [
        sys.executable,
        "-m",
        "runtime.storage.cli",
        "storage-init",
        uri,
        str(dest),
        "--cache-dir",
        str(cache_dir),
    ]
    subprocess.run(cmd, check=True, cwd=REPO, env=env, stderr=subprocess.DEVNULL)
    return time.monotonic() - started, children_cpu_s() - cpu


def same_tree(a: Path, b: Path, files: list[Path]) -> bool:
    return all(filecmp.cmp(p, b / p.relative_to(a), shallow=False) for p in files)


async def cache_hits(url: str, base: Path, cache: NodeCache, nbytes: int, count: int = 5) -> list[float]:
    """A replica start on a node that has the model: listing + hard links, into a fresh folder each time."""
    out = []
    for i in range(count):
        hit = await materialize(url, base / f"zs-hit-{i}", cache)
        assert hit.cache_hit and hit.bytes == nbytes
        out.append(round(hit.seconds * 1000, 1))
    return out


def s3_pass(base: Path, model: Path, files: list[Path]) -> dict[str, object]:
    """Upload a subset to a moto S3 server and fetch it back with storage-init (s3://)."""
    import boto3

    port = free_port()
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        endpoint = f"http://127.0.0.1:{port}"
        env = dict(
            os.environ,
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_REGION="us-east-1",
            AWS_ENDPOINT_URL=endpoint,
        )
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        s3.create_bucket(Bucket="models")
        subset = [p for p in files if p.stat().st_size < MiB][:40]
        big = base / "s3-big.bin"
        with open(files[-1], "rb") as src, open(big, "wb") as dst:
            dst.write(src.read(96 * MiB))  # multipart upload (boto3 splits at 8 MiB): size-checked only
        subset_root = base / "s3-src"
        for p in subset:
            (subset_root / p.relative_to(model)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, subset_root / p.relative_to(model))
        shutil.move(big, subset_root / "big.safetensors")
        uploaded = sorted(p for p in subset_root.rglob("*") if p.is_file())
        for p in uploaded:
            s3.upload_file(str(p), "models", f"model/{p.relative_to(subset_root).as_posix()}")
        nbytes = sum(p.stat().st_size for p in uploaded)
        seconds, _ = run_zeroserve("s3://models/model", base / "s3-dest", base / "s3-cache", env)
        ok = same_tree(subset_root, base / "s3-dest", uploaded)
        return {
            "s3_ok": ok,
            "s3_bytes": nbytes,
            "s3_files": len(uploaded),
            "s3_MBps": round(nbytes / seconds / 1e6, 1),
        }
    finally:
        moto.terminate()
        moto.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=2.0, help="model size (default 2 GiB)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating curl/zeroserve rounds (best of)")
    args = parser.parse_args()
    total = int(args.gib * (1 << 30))
    base = Path(tempfile.mkdtemp(prefix="zs-bench-storage-", dir=os.environ.get("TMPDIR", "/tmp")))
    os.chmod(base, 0o755)
    nginx: subprocess.Popen[bytes] | None = None
    load_start = os.getloadavg()[0]
    try:
        docroot = base / "www"
        model = docroot / "model"
        model.mkdir(parents=True)
        say(f"writing a {total / (1 << 30):.2f} GiB model under {model}")
        files = make_model(model, total, np.random.default_rng(7))
        nbytes = sum(p.stat().st_size for p in files)
        port = free_port()
        nginx = start_nginx(base, docroot, port)
        url = f"http://127.0.0.1:{port}/model/"
        curl_s: list[float] = []
        zs_s: list[float] = []
        curl_cpu: list[float] = []
        zs_cpu: list[float] = []
        for r in range(args.rounds):
            out = base / f"curl-{r}"
            os.sync()  # start each timed copy with no dirty pages from the previous one
            wall_s, cpu_s = run_curl(files, model, url, out)
            curl_s.append(wall_s)
            curl_cpu.append(cpu_s)
            say(f"round {r}: curl {nbytes / curl_s[-1] / 1e6:.0f} MB/s")
            shutil.rmtree(out)
            cache = base / f"cache-{r}"
            dest = base / f"zs-{r}"
            os.sync()
            wall_s, cpu_s = run_zeroserve(url, dest, cache)
            zs_s.append(wall_s)
            zs_cpu.append(cpu_s)
            say(f"round {r}: zeroserve {nbytes / zs_s[-1] / 1e6:.0f} MB/s")
            if r == 0:
                say("checking every byte of the zeroserve copy")
                correct = same_tree(model, dest, files)
                hit_proc_s, _ = run_zeroserve(url, base / "zs-hit", cache)
                shutil.rmtree(base / "zs-hit")
                hits_ms = asyncio.run(cache_hits(url, base, NodeCache(cache), nbytes))
                # The same with the entry trusted for a minute after validation: no listing request.
                fresh_ms = asyncio.run(
                    cache_hits(url, base / "fresh", NodeCache(cache, fresh_for_s=60), nbytes)
                )
                say(f"cache hits: {hits_ms} ms in process ({fresh_ms} ms fresh)")
                say(f"cache hit as a CLI process: {hit_proc_s * 1000:.0f} ms")
            if r < args.rounds - 1:
                shutil.rmtree(dest)
                shutil.rmtree(cache, ignore_errors=True)
        s3 = s3_pass(base, model, files)
        say(f"s3 pass: {s3}")
        curl_mbps = nbytes / min(curl_s) / 1e6
        zs_mbps = nbytes / min(zs_s) / 1e6
        result = {
            "bytes": nbytes,
            "files": len(files),
            "curl_MBps": round(curl_mbps, 1),
            "zeroserve_MBps": round(zs_mbps, 1),
            "ratio_vs_curl": round(zs_mbps / curl_mbps, 3),  # best round against best round
            "ratio_vs_curl_median": round(statistics.median(curl_s) / statistics.median(zs_s), 3),
            "curl_s": [round(s, 3) for s in curl_s],
            "zeroserve_s": [round(s, 3) for s in zs_s],
            # CPU seconds of the download process itself (curl / storage-init incl. Python start-up),
            # median over the rounds; nginx's side is not counted for either.
            "curl_cpu_s": round(statistics.median(curl_cpu), 2),
            "zeroserve_cpu_s": round(statistics.median(zs_cpu), 2),
            "zeroserve_correct": correct,
            "cache_hit_ms": statistics.median(hits_ms),
            "cache_hit_ms_all": hits_ms,
            "cache_hit_fresh_ms": statistics.median(fresh_ms),
            "cache_hit_cli_ms": round(hit_proc_s * 1000, 1),
            **s3,
            "load_avg_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],  # others share the CPUs
        }
        print(json.dumps(result))
        return 0
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
