"""Starting the local backend's child processes (replicas, warm pool processes) so they die with us.

Children run in their own session (`start_new_session`), so a Ctrl-C in the terminal reaches only
`zeroserve up`, which then drains them in order. The price is that nothing ends them when `up`
dies without that path (SIGKILL, OOM killer, a crash): they would keep running under init, still
listening. On Linux each child therefore asks the kernel for SIGTERM when its parent dies
(`prctl(PR_SET_PDEATHSIG)`), so it drains and exits as on a normal scale-down. Elsewhere the hook
is absent and children behave as before.

A replica's stderr is also read here: forwarded to ours unchanged, with its last bytes kept so a
replica that fails to start can say why in the backend's status.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import ctypes
import functools
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1        # <linux/prctl.h>
TAIL_LIMIT_BYTES = 2048     # how much of a replica's stderr a failure report carries


@functools.cache
def _prctl() -> Any | None:
    """libc's prctl, looked up once in the parent: the child between fork and exec should do as
    little as possible (no library loading)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        log.warning("prctl is not available; replicas will outlive a killed `zeroserve up`")
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    return fn


def parent_death_hook(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child receive `sig` when this process dies; None off Linux.

    The kernel sends it when the *thread* that forked exits, so call this and spawn from the event
    loop's thread (asyncio's subprocess functions fork there, uvloop's too), never from a worker
    thread that may end first."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def arm() -> None:
        if prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return          # not armed: the child runs, as it would without this hook
        # The parent may have died between fork and prctl: then no signal will ever come and we
        # have been reparented (to init or a subreaper), so exit instead of starting orphaned.
        if os.getppid() != parent:
            os._exit(1)

    return arm


async def spawn(argv: Sequence[str], *, env: Mapping[str, str],
                stderr: int | None = None) -> asyncio.subprocess.Process:
    """Start a child in its own session that gets SIGTERM when we die (on Linux)."""
    return await asyncio.create_subprocess_exec(
        *argv, env=dict(env), stdin=asyncio.subprocess.DEVNULL, stderr=stderr,
        start_new_session=True, preexec_fn=parent_death_hook())


class OutputTail:
    """Pumps a child's stderr to our stderr and keeps its last `limit_bytes` bytes."""

    def __init__(self, limit_bytes: int = TAIL_LIMIT_BYTES) -> None:
        self.limit_bytes = limit_bytes
        self._kept = bytearray()
        self._cut = False               # bytes were dropped from the front
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._task: asyncio.Task[None] | None = None

    def start(self, stream: asyncio.StreamReader | None, name: str) -> None:
        if stream is not None:
            self._task = asyncio.create_task(self._pump(stream), name=f"stderr-{name}")

    async def _pump(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):     # one read per burst, not per line
            self._kept += chunk
            if len(self._kept) > self.limit_bytes:
                del self._kept[:len(self._kept) - self.limit_bytes]
                self._cut = True
            # Looked up at each write: whoever runs us (a test's capture) may have replaced it.
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(self._decoder.decode(chunk))
                sys.stderr.flush()

    async def drained(self, timeout_s: float) -> None:
        """Wait for the child's stderr to reach EOF; give up after `timeout_s` (a grandchild that
        inherited the pipe can hold it open) and stop reading."""
        task = self._task
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            pass
        finally:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def text(self) -> str:
        """The kept bytes as text, starting at a whole line when the front was cut."""
        data = bytes(self._kept)
        if self._cut and b"\n" in data[:-1]:
            data = data[data.index(b"\n") + 1:]
        return data.decode("utf-8", errors="replace").strip()
