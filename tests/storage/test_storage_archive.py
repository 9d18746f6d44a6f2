"""Archives are unpacked only when every member is safe; one bad member rejects the whole archive."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from runtime.storage import IntegrityError, NodeCache, materialize
from runtime.storage.archive import extract
from storage_servers import FAST, FileServer


def make_tar(members: list[tarfile.TarInfo], payload: bytes = b"data", gz: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for m in members:
            if m.isreg():
                m.size = len(payload)
                tf.addfile(m, io.BytesIO(payload))
            else:
                tf.addfile(m)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type = kind
    m.linkname = link
    return m


GOOD = [
    member("model/", tarfile.DIRTYPE),
    member("model/weights.bin"),
    member("model/link", tarfile.SYMTYPE, "weights.bin"),
]
EVIL = {
    "dotdot": [member("ok.txt"), member("../escaped.txt")],
    "absolute": [member("/tmp/zs-absolute-escape.txt")],
    "symlink_out": [member("link", tarfile.SYMTYPE, "../../etc/passwd")],
    "symlink_abs": [member("link", tarfile.SYMTYPE, "/etc/passwd")],
    "hardlink_out": [member("hard", tarfile.LNKTYPE, "../outside")],
    "device": [member("dev", tarfile.CHRTYPE)],
    "fifo": [member("fifo", tarfile.FIFOTYPE)],
}


def test_good_tar_unpacks_with_inner_links(tmp_path: Path) -> None:
    archive = tmp_path / "m.tar.gz"
    archive.write_bytes(make_tar(GOOD))
    extract("x://m.tar.gz", archive, tmp_path / "out")
    assert (tmp_path / "out/model/weights.bin").read_bytes() == b"data"
    assert os.readlink(tmp_path / "out/model/link") == "weights.bin"


@pytest.mark.parametrize("case", sorted(EVIL))
def test_evil_tar_is_rejected_before_writing(tmp_path: Path, case: str) -> None:
    archive = tmp_path / "evil.tar"
    archive.write_bytes(make_tar(EVIL[case], gz=False))
    out = tmp_path / "sub" / "out"
    with pytest.raises(IntegrityError, match="unsafe archive"):
        extract("x://evil.tar", archive, out)
    assert list(out.rglob("*")) == []  # the good member before the bad one was not written either
    assert not (tmp_path / "sub" / "escaped.txt").exists()


@pytest.mark.parametrize("name", ["../up.txt", "/abs.txt"])
def test_evil_zip_is_rejected(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine.txt", b"ok")
        zf.writestr(name, b"bad")
    with pytest.raises(IntegrityError, match="escapes"):
        extract("x://evil.zip", archive, tmp_path / "out")


def test_zip_symlink_is_rejected(tmp_path: Path) -> None:
    archive = tmp_path / "link.zip"
    info = zipfile.ZipInfo("link")
    info.external_attr = 0o120777 << 16  # S_IFLNK
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(IntegrityError, match="link or special"):
        extract("x://link.zip", archive, tmp_path / "out")


async def test_archive_over_http_is_cached_unpacked(
    file_server: FileServer, cache: NodeCache, tmp_path: Path
) -> None:
    file_server.files = {"/a/model.tar.gz": make_tar(GOOD), "/a/evil.tar.gz": make_tar(EVIL["symlink_out"])}
    result = await materialize(f"{file_server.url}/a/model.tar.gz", tmp_path / "d", cache, FAST)
    assert (tmp_path / "d/model/weights.bin").read_bytes() == b"data"
    assert result.files == 1  # the archive itself is not kept; symlinks are recreated, not counted
    assert os.readlink(tmp_path / "d/model/link") == "weights.bin"

    with pytest.raises(IntegrityError, match="points outside"):
        await materialize(f"{file_server.url}/a/evil.tar.gz", tmp_path / "e", cache, FAST)
    assert [e.uri for e in cache.entries()] == [f"{file_server.url}/a/model.tar.gz"]
    assert not (tmp_path / "e").exists() or list((tmp_path / "e").iterdir()) == []
    assert list((cache.root / "staging").iterdir()) == []  # nothing left to resume either
