"""Putting files in a replica's directory without copying them: hard links from the node cache
(symlinks across filesystems), and file:// / pvc:// sources read in place."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.storage.archive import extract, is_archive
from runtime.storage.errors import NotFoundError
from runtime.storage.uri import StorageUri


@dataclass(slots=True)
class _Linked:
    nbytes: int = 0
    files: int = 0
    symlinks: bool = False  # set on the first EXDEV: dest is on another filesystem


def link_tree(src: Path, dest: Path, *, count_bytes: bool = True) -> tuple[int, int]:
    """Hard-link every file of `src` into `dest` (symlinks when they are on different filesystems).
    Works relative to directory fds with scandir, so a cache hit costs about one syscall per file."""
    dest.mkdir(parents=True, exist_ok=True)
    state = _Linked()
    src_fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        dst_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
        try:
            _link_dir(str(src), src_fd, dst_fd, state, count_bytes)
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)
    return state.nbytes, state.files


def _replacing(name: str, dst_fd: int, make: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """Create `name` in dst_fd with make(*args, **kwargs), replacing what a previous run left."""
    try:
        make(*args, **kwargs)
    except FileExistsError:  # a replica restarting into its old directory
        os.unlink(name, dir_fd=dst_fd)
        make(*args, **kwargs)


def _link_dir(src_path: str, src_fd: int, dst_fd: int, state: _Linked, count_bytes: bool) -> None:
    with os.scandir(src_fd) as it:
        entries = list(it)
    for e in entries:
        name = e.name
        if e.is_dir(follow_symlinks=False):
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, dir_fd=dst_fd)
            child_src = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=src_fd)
            child_dst = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=dst_fd)
            try:
                _link_dir(os.path.join(src_path, name), child_src, child_dst, state, count_bytes)
            finally:
                os.close(child_src)
                os.close(child_dst)
            continue
        if e.is_symlink():
            target = os.readlink(name, dir_fd=src_fd)
            _replacing(name, dst_fd, os.symlink, target, name, dir_fd=dst_fd)
            continue
        if not state.symlinks:
            try:
                _replacing(name, dst_fd, os.link, name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            except OSError as err:
                if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                state.symlinks = True  # cross-device: point at the read-only cache copy instead
        if state.symlinks:
            full = os.path.join(src_path, name)
            _replacing(name, dst_fd, os.symlink, full, name, dir_fd=dst_fd)
        if count_bytes:
            state.nbytes += e.stat(follow_symlinks=False).st_size
        state.files += 1


def read_local(uri: StorageUri, dest: Path) -> tuple[int, int]:
    """Deliver a file:// or pvc:// path into `dest`: hard links on the same filesystem, else a copy
    (file://) or symlinks into the mounted volume (pvc://); an archive is unpacked."""
    assert uri.local_path is not None
    src = uri.local_path
    if not src.exists():
        raise NotFoundError(uri.raw, f"not found ({src} does not exist)")
    if src.is_file():
        dest.mkdir(parents=True, exist_ok=True)
        if is_archive(src.name):
            extract(uri.raw, src, dest)
            return sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()), sum(
                1 for p in dest.rglob("*") if p.is_file()
            )
        shutil.copy2(src, dest / src.name)
        return src.stat().st_size, 1
    if _same_device(src, dest):  # hard links: no copy, and model servers never write their files
        return link_tree(src, dest)
    if uri.scheme == "pvc":  # a mounted volume: point at it, copying would defeat its purpose
        return _symlink_dir(src, dest)
    shutil.copytree(src, dest, dirs_exist_ok=True)
    return sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()), sum(
        1 for p in dest.rglob("*") if p.is_file()
    )


def _same_device(a: Path, b: Path) -> bool:
    b.mkdir(parents=True, exist_ok=True)
    return a.stat().st_dev == b.stat().st_dev


def _symlink_dir(src: Path, dest: Path) -> tuple[int, int]:
    nbytes = files = 0
    for child in src.iterdir():
        target = dest / child.name
        if not target.exists():
            target.symlink_to(child)
        for p in [child] if child.is_file() else child.rglob("*"):
            if p.is_file():
                nbytes += p.stat().st_size
                files += 1
    return nbytes, files
