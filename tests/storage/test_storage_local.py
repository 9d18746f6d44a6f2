"""file:// and pvc://: read in place (hard links on the same filesystem), never cached."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from runtime.storage import NodeCache, NotFoundError, materialize, prefetch


def make_model(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text("{}")
    (root / "sub" / "w.bin").write_bytes(b"w" * 1000)


async def test_file_dir_is_hard_linked(tmp_path: Path, cache: NodeCache) -> None:
    make_model(tmp_path / "src")
    result = await materialize(f"file://{tmp_path / 'src'}", tmp_path / "d", cache)
    assert (result.files, result.bytes, result.cache_hit) == (2, 1002, False)
    assert (tmp_path / "d/sub/w.bin").stat().st_ino == (tmp_path / "src/sub/w.bin").stat().st_ino
    assert cache.entries() == []
    assert await prefetch(f"file://{tmp_path / 'src'}", cache) == tmp_path / "src"


async def test_pvc_path_under_the_mount_root(
    tmp_path: Path, cache: NodeCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZEROSERVE_PVC_ROOT", str(tmp_path / "mnt"))
    make_model(tmp_path / "mnt" / "claim" / "llama")
    await materialize("pvc://claim/llama", tmp_path / "d", cache)
    assert (tmp_path / "d/config.json").read_text() == "{}"


async def test_local_archive_is_unpacked(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("w.bin")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    (tmp_path / "m.tgz").write_bytes(buf.getvalue())
    result = await materialize(f"file://{tmp_path / 'm.tgz'}", tmp_path / "d", None)
    assert (tmp_path / "d/w.bin").read_bytes() == b"abc" and result.files == 1


async def test_missing_local_path(tmp_path: Path, cache: NodeCache) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        await materialize(f"file://{tmp_path / 'nope'}", tmp_path / "d", cache)
    with pytest.raises(NotFoundError):
        await prefetch(f"file://{tmp_path / 'nope'}", cache)
