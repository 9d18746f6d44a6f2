"""The node-cache DaemonSet's loop, run as written in the manifest: it fills the node cache with
the URIs of the prefetch ConfigMap (downloading each once) and prunes it."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import yaml
from aiohttp import web
from k8s_harness import ROOT


def daemonset_container() -> dict[str, object]:
    docs = yaml.safe_load_all((ROOT / "manifests" / "node-cache.yaml").read_text())
    ds = next(d for d in docs if d and d["kind"] == "DaemonSet")
    return dict(ds["spec"]["template"]["spec"]["containers"][0])


async def test_prefetch_loop_fills_the_cache_once(tmp_path: Path) -> None:
    gets: list[str] = []

    async def blob(request: web.Request) -> web.Response:
        if request.method == "GET":  # HEADs only check freshness
            gets.append(request.path)
        return web.Response(body=request.path.encode() * 100)

    app = web.Application()
    app.router.add_get("/models/{name}", blob)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}/models"

    container = daemonset_container()
    script = str(container["args"][0])  # type: ignore[index]
    assert "sleep 30" in script
    # The container's paths become the test's folders; one pass instead of forever.
    uris = tmp_path / "uris"
    uris.write_text(f"{base}/a.bin\n\n{base}/b.bin\n")
    script = (script.replace("/etc/zeroserve/prefetch/uris", str(uris))
              .replace("/tmp/prefetch", str(tmp_path / "scratch")).replace("sleep 30", "break"))
    shim = tmp_path / "bin" / "zeroserve"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m zeroserve "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{shim.parent}:{os.environ['PATH']}"}
    env.update({e["name"]: e["value"] for e in container["env"]})  # type: ignore[attr-defined]
    env["ZEROSERVE_CACHE_DIR"] = str(tmp_path / "cache")
    try:
        for _ in range(2):  # the second pass finds everything cached
            proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", script, env=env, cwd=ROOT)
            assert await asyncio.wait_for(proc.wait(), 60) == 0
    finally:
        await runner.cleanup()
    assert sorted(gets) == ["/models/a.bin", "/models/b.bin"]
    assert len(list((tmp_path / "cache" / "entries").iterdir())) == 2
    assert not (tmp_path / "scratch" / "current").exists()
