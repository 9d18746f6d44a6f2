"""hf:// against a local aiohttp stand-in of the Hugging Face Hub API (HF_ENDPOINT points at it).

The stand-in follows the Hub's shapes: /api/models/{repo}/revision/{rev}?blobs=true lists siblings
with size, blobId (git sha1) and lfs.sha256; /{repo}/resolve/{commit}/{path} serves small files and
redirects LFS files to a CDN path, which honours Range.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from runtime.storage import AccessDeniedError, IntegrityError, NodeCache, NotFoundError, materialize
from storage_servers import FAST, MiB, serve_on_free_port

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


@dataclass
class Hub:
    files: dict[str, bytes]
    lfs: set[str]
    url: str = ""
    token: str | None = None  # when set, the repo is private
    lie_sha256: bool = False
    lie_blob_id: bool = False
    omit_sizes: bool = False  # an older API answer: sizes come from HEAD on resolve (X-Linked-*)
    seen_auth: list[str] = field(default_factory=list)
    cdn_ranges: list[str] = field(default_factory=list)
    info_calls: int = 0

    def _auth_ok(self, request: web.Request) -> bool:
        self.seen_auth.append(request.headers.get("Authorization", ""))
        return self.token is None or request.headers.get("Authorization") == f"Bearer {self.token}"

    async def info(self, request: web.Request) -> web.Response:
        self.info_calls += 1
        if request.match_info["repo"] != "acme/tiny":
            return web.json_response({"error": "Repository not found"}, status=404)
        if not self._auth_ok(request):
            return web.json_response({"error": "Invalid credentials"}, status=401)
        if request.match_info["rev"] not in ("main", COMMIT):
            return web.json_response({"error": "Revision not found"}, status=404)
        siblings: list[dict[str, object]] = []
        for name, data in self.files.items():
            blob = git_blob_id(b"other" if self.lie_blob_id else data)
            s: dict[str, object] = {"rfilename": name, "size": len(data), "blobId": blob}
            if self.omit_sizes:
                siblings.append({"rfilename": name})
                continue
            if name in self.lfs:
                sha = hashlib.sha256(data).hexdigest()
                s["lfs"] = {"sha256": "0" * 64 if self.lie_sha256 else sha, "size": len(data)}
            siblings.append(s)
        return web.json_response({"id": "acme/tiny", "sha": COMMIT, "siblings": siblings})

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        if not self._auth_ok(request):
            return web.Response(status=401)
        assert request.match_info["rev"] == COMMIT  # files are read at the pinned commit
        name = request.match_info["path"]
        if name not in self.files:
            return web.Response(status=404)
        if name in self.lfs:
            sha = hashlib.sha256(self.files[name]).hexdigest()
            linked = {"X-Linked-Size": str(len(self.files[name])), "X-Linked-Etag": f'"{sha}"'}
            raise web.HTTPFound(f"/cdn/{name}", headers=linked)
        return web.Response(body=self.files[name])

    async def cdn(self, request: web.Request) -> web.Response:
        data = self.files[request.match_info["path"]]
        rng = request.headers.get("Range")
        if not rng:
            return web.Response(body=data)
        self.cdn_ranges.append(rng)
        first, _, last = rng.removeprefix("bytes=").partition("-")
        start, end = int(first), int(last) + 1
        headers = {"Content-Range": f"bytes {start}-{end - 1}/{len(data)}"}
        return web.Response(status=206, body=data[start:end], headers=headers)


@pytest.fixture
async def hub(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Hub]:
    files = {
        "config.json": b'{"hidden_size": 8}',
        "model.safetensors": os.urandom(2 * MiB + 17),
        "tokenizer/vocab.txt": b"a\nb\nc\n",
    }
    h = Hub(files=files, lfs={"model.safetensors"})
    app = web.Application()
    app.router.add_get("/api/models/{repo:[^/]+/[^/]+}/revision/{rev}", h.info)
    app.router.add_get("/{repo:[^/]+/[^/]+}/resolve/{rev}/{path:.+}", h.resolve)
    app.router.add_get("/cdn/{path:.+}", h.cdn)
    runner = web.AppRunner(app)
    await runner.setup()
    h.url = await serve_on_free_port(runner)
    monkeypatch.setenv("HF_ENDPOINT", h.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    yield h
    await runner.cleanup()


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("suffix", ["", "@main", f"@{COMMIT}"])
async def test_repo_at_revision(
    hub: Hub, cache: NodeCache, tmp_path: Path, suffix: str, http_client: str
) -> None:
    # The lean client meets the Hub's redirect to the CDN and hands the request to aiohttp.
    result = await materialize(f"hf://acme/tiny{suffix}", tmp_path / "d", cache, FAST)
    assert tree(tmp_path / "d") == hub.files
    assert result.files == 3
    assert len(hub.cdn_ranges) > 1  # the LFS file came in ranged parts through the redirect
    (entry,) = cache.entries()
    assert entry.version == COMMIT  # content-addressed by the resolved commit, not the branch name


async def test_sizes_and_sha256_from_head_when_the_listing_lacks_them(
    hub: Hub, cache: NodeCache, tmp_path: Path
) -> None:
    hub.omit_sizes = True
    await materialize("hf://acme/tiny", tmp_path / "d", cache, FAST)
    assert tree(tmp_path / "d") == hub.files
    from runtime.storage.sources.hf import HfSource
    from runtime.storage.uri import parse_uri

    source = HfSource(parse_uri("hf://acme/tiny"))
    try:
        listing = await source.listing()
    finally:
        await source.close()
    big = next(f for f in listing.files if f.path == "model.safetensors")
    assert big.sha256 == hashlib.sha256(hub.files["model.safetensors"]).hexdigest()


async def test_a_commit_pin_is_immutable_so_a_hit_needs_no_network(
    hub: Hub, cache: NodeCache, tmp_path: Path
) -> None:
    await materialize(f"hf://acme/tiny@{COMMIT}", tmp_path / "a", cache, FAST)
    calls = hub.info_calls
    hit = await materialize(f"hf://acme/tiny@{COMMIT}", tmp_path / "b", cache, FAST)
    assert hit.cache_hit and hub.info_calls == calls
    await materialize("hf://acme/tiny@main", tmp_path / "c", cache, FAST)  # a branch can move: asked
    assert hub.info_calls == calls + 1


async def test_wrong_lfs_sha256_is_rejected(hub: Hub, cache: NodeCache, tmp_path: Path) -> None:
    hub.lie_sha256 = True
    with pytest.raises(IntegrityError, match=r"model\.safetensors: sha256 mismatch"):
        await materialize("hf://acme/tiny", tmp_path / "d", cache, FAST)
    assert cache.entries() == []


async def test_private_repo_needs_token(
    hub: Hub, cache: NodeCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.token = "hf_secret"
    with pytest.raises(AccessDeniedError, match="HF_TOKEN"):
        await materialize("hf://acme/tiny", tmp_path / "d", cache, FAST)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    await materialize("hf://acme/tiny", tmp_path / "d", cache, FAST)
    assert tree(tmp_path / "d") == hub.files
    assert "Bearer hf_secret" in hub.seen_auth


async def test_small_files_are_checked_against_their_git_blob_id(
    hub: Hub, cache: NodeCache, tmp_path: Path
) -> None:
    hub.lie_blob_id = True
    with pytest.raises(IntegrityError, match="git_sha1 mismatch"):
        await materialize("hf://acme/tiny", tmp_path / "d", cache, FAST)


@pytest.mark.parametrize("uri", ["hf://acme/missing", "hf://acme/tiny@no-such-branch"])
async def test_missing_repo_or_revision(hub: Hub, cache: NodeCache, tmp_path: Path, uri: str) -> None:
    with pytest.raises(NotFoundError, match="404"):
        await materialize(uri, tmp_path / "d", cache, FAST)
