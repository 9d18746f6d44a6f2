"""Safe extraction of .tar, .tar.gz/.tgz and .zip model archives (KServe unpacks them too).

Every member is checked before anything is written: no absolute names, no `..`, no link whose target
leaves the destination, no device files or FIFOs. One bad member rejects the whole archive.
"""

from __future__ import annotations

import posixpath
import stat
import tarfile
import zipfile
from pathlib import Path

from runtime.storage.errors import IntegrityError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _inside(name: str) -> bool:
    clean = posixpath.normpath(name)
    return not (
        name.startswith("/") or clean == ".." or clean.startswith("../") or "\x00" in name or len(name) == 0
    )


def _check_tar_member(uri: str, m: tarfile.TarInfo) -> None:
    if not _inside(m.name):
        raise IntegrityError(uri, f"unsafe archive: member {m.name!r} escapes the destination")
    if m.issym():
        target = posixpath.normpath(posixpath.join(posixpath.dirname(m.name), m.linkname))
        if m.linkname.startswith("/") or not _inside(target):
            raise IntegrityError(uri, f"unsafe archive: symlink {m.name!r} -> {m.linkname!r} points outside")
    elif m.islnk():
        if not _inside(m.linkname):
            raise IntegrityError(uri, f"unsafe archive: hard link {m.name!r} -> {m.linkname!r} escapes")
    elif not (m.isreg() or m.isdir()):
        raise IntegrityError(uri, f"unsafe archive: {m.name!r} is a device, FIFO or other special file")


def extract(uri: str, archive: Path, dest: Path) -> None:
    """Unpack `archive` into `dest` (which the caller discards if this raises)."""
    dest.mkdir(parents=True, exist_ok=True)
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    mode = info.external_attr >> 16
                    name = info.filename
                    if not _inside(name):
                        raise IntegrityError(uri, f"unsafe archive: member {name!r} escapes the destination")
                    kind = stat.S_IFMT(mode)  # 0 when the writer recorded no file type (plain file)
                    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                        raise IntegrityError(uri, f"unsafe archive: {name!r} is a link or special file")
                zf.extractall(dest)
            return
        with tarfile.open(archive, "r:*") as tf:
            members = tf.getmembers()
            for m in members:
                _check_tar_member(uri, m)
            # The stdlib "data" filter is a second guard (it also drops setuid bits and odd modes).
            tf.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile) as err:
        raise IntegrityError(uri, f"corrupt archive {archive.name}: {err}") from err
