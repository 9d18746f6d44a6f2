"""gs:// through obstore against a local stand-in of the GCS XML API (no GCS emulator that speaks
the XML API installs here, and no GCP credentials): ListObjectsV2-style listing, ranged GET and HEAD
on percent-encoded object names, anonymous access (GOOGLE_SKIP_SIGNATURE)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote
from xml.sax.saxutils import escape

import pytest
from aiohttp import web

from runtime.storage import NodeCache, NotFoundError, materialize
from storage_servers import FAST, MiB, serve_on_free_port

MODIFIED = "Mon, 02 Jun 2025 10:00:00 GMT"


@dataclass
class Gcs:
    objects: dict[str, bytes]
    ranges: list[str] = field(default_factory=list)

    async def list_objects(self, request: web.Request) -> web.Response:
        prefix = request.query.get("prefix", "")
        items = "".join(
            f"<Contents><Key>{escape(k)}</Key><LastModified>2025-06-02T10:00:00.000Z</LastModified>"
            f'<ETag>"{hashlib.md5(v).hexdigest()}"</ETag><Size>{len(v)}</Size></Contents>'
            for k, v in sorted(self.objects.items())
            if k.startswith(prefix)
        )
        body = (
            '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult>'
            f"<Name>{request.match_info['bucket']}</Name><Prefix>{escape(prefix)}</Prefix>"
            f"<IsTruncated>false</IsTruncated>{items}</ListBucketResult>"
        )
        return web.Response(body=body, content_type="application/xml")

    async def get_object(self, request: web.Request) -> web.Response:
        key = unquote(request.match_info["key"])  # GCS clients encode "/" in names as %2F
        data = self.objects.get(key)
        if data is None:
            return web.Response(status=404, text="<Error><Code>NoSuchKey</Code></Error>")
        headers = {"ETag": f'"{hashlib.md5(data).hexdigest()}"', "Last-Modified": MODIFIED}
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(data))
            return web.Response(headers=headers)
        rng = request.headers.get("Range")
        if not rng:
            return web.Response(body=data, headers=headers)
        self.ranges.append(rng)
        first, _, last = rng.removeprefix("bytes=").partition("-")
        start, end = int(first), min(int(last) + 1, len(data))
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        return web.Response(status=206, body=data[start:end], headers=headers)


@pytest.fixture
async def gcs(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Gcs]:
    g = Gcs(
        objects={
            "llama/config.json": b'{"layers": 2}',
            "llama/weights/shard-1.bin": os.urandom(3 * MiB + 3),
            "llama/tok/vocab.txt": b"a\nb\n",
            "other/x.bin": b"not under the prefix",
        }
    )
    app = web.Application()
    app.router.add_get("/{bucket}", g.list_objects)
    app.router.add_route("*", "/{bucket}/{key:.+}", g.get_object)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    monkeypatch.setenv("GOOGLE_BASE_URL", await serve_on_free_port(runner))
    monkeypatch.setenv("GOOGLE_SKIP_SIGNATURE", "true")
    yield g
    await runner.cleanup()


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


async def test_bucket_prefix_in_ranged_parts(gcs: Gcs, cache: NodeCache, tmp_path: Path) -> None:
    result = await materialize("gs://models/llama", tmp_path / "d", cache, FAST)
    expected = {k.removeprefix("llama/"): v for k, v in gcs.objects.items() if k.startswith("llama/")}
    assert tree(tmp_path / "d") == expected and not result.cache_hit
    assert len(gcs.ranges) > 1  # the 3 MiB object came in parts
    assert (await materialize("gs://models/llama", tmp_path / "e", cache, FAST)).cache_hit


async def test_single_object_and_missing_prefix(gcs: Gcs, cache: NodeCache, tmp_path: Path) -> None:
    await materialize("gs://models/llama/config.json", tmp_path / "d", cache, FAST)
    assert tree(tmp_path / "d") == {"config.json": gcs.objects["llama/config.json"]}
    with pytest.raises(NotFoundError):
        await materialize("gs://models/nothing", tmp_path / "e", cache, FAST)
