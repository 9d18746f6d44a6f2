"""A lean HTTP/1.1 GET for large plain-http ranges: recv_into one reused 1 MiB buffer, no parser
copies, no per-chunk objects.

aiohttp costs about three times the CPU per byte of this loop (reads of 256 KiB, buffer joins, a
callback per read), and on a node whose CPUs are busy starting model servers, CPU per byte is
download speed. Only what it can do exactly is taken here: http:// (no TLS), a 200/206 answer with a
Content-Length, no redirect, no transfer or content coding. Anything else raises FastPathUnsupported
before a byte is yielded, and the caller falls back to aiohttp.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Mapping

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

BUFFER_BYTES = 1 << 20
MAX_HEADER_BYTES = 64 << 10


class FastPathUnsupported(Exception):
    """The response needs a full client (redirect, chunked, TLS, ...); nothing was consumed."""


class ShortRead(ConnectionError):
    """The server closed the connection before the promised Content-Length."""


def _request(url: URL, headers: Mapping[str, str]) -> bytes:
    host = url.raw_host or ""
    if ":" in host:  # an IPv6 literal goes back into brackets
        host = f"[{host}]"
    if url.port and not url.is_default_port():
        host = f"{host}:{url.port}"
    lines = [
        f"GET {url.raw_path_qs} HTTP/1.1",
        f"Host: {host}",
        "Accept-Encoding: identity",
        "Connection: close",
        "User-Agent: zeroserve-storage-init",
    ]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "host"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _parse_head(raw: bytes) -> tuple[int, str, CIMultiDictProxy[str]]:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise FastPathUnsupported(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.add(name.strip(), value.strip())
    return int(parts[1]), parts[2] if len(parts) > 2 else "", CIMultiDictProxy(headers)


class FastResponse:
    """Status, headers and the body of one GET. `chunks()` yields views into one reused buffer: each
    must be consumed (written) before the next is requested. Always `close()` it."""

    def __init__(
        self, sock: socket.socket, status: int, reason: str, headers: CIMultiDictProxy[str], leftover: bytes
    ) -> None:
        self._sock = sock
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length = int(headers.get("Content-Length", "-1"))
        self._leftover = leftover
        self._view = memoryview(bytearray(BUFFER_BYTES))

    async def chunks(self, read_timeout_s: float) -> AsyncIterator[memoryview]:
        loop = asyncio.get_running_loop()
        leftover = self._leftover[: self.content_length]
        if leftover:
            yield memoryview(leftover)
        left = self.content_length - len(leftover)
        while left > 0:
            async with asyncio.timeout(read_timeout_s):
                n = await loop.sock_recv_into(self._sock, self._view[: min(left, BUFFER_BYTES)])
            if n == 0:
                raise ShortRead(f"connection closed with {left} bytes to go")
            left -= n
            yield self._view[:n]

    def close(self) -> None:
        self._sock.close()


async def open_get(url: URL, headers: Mapping[str, str], read_timeout_s: float) -> FastResponse:
    """Connect, send the GET and read the response head."""
    if url.scheme != "http" or not url.raw_host:
        raise FastPathUnsupported("only plain http")
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(url.raw_host, url.port or 80, type=socket.SOCK_STREAM)
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        async with asyncio.timeout(read_timeout_s):
            await loop.sock_connect(sock, addr)
            await loop.sock_sendall(sock, _request(url, headers))
            head = bytearray(MAX_HEADER_BYTES)
            view = memoryview(head)
            got = 0
            while (end := head.find(b"\r\n\r\n", 0, got)) < 0:
                if got >= MAX_HEADER_BYTES:
                    raise FastPathUnsupported("response headers too large")
                n = await loop.sock_recv_into(sock, view[got:])
                if n == 0:
                    raise ShortRead("connection closed before the response headers")
                got += n
        status, reason, hdrs = _parse_head(bytes(head[:end]))
        if 300 <= status < 400 or "Transfer-Encoding" in hdrs:
            raise FastPathUnsupported(f"HTTP {status} {hdrs.get('Transfer-Encoding', '')}")
        if hdrs.get("Content-Encoding", "identity") != "identity":
            raise FastPathUnsupported("content coding")
        if int(hdrs.get("Content-Length", "-1")) < 0:
            raise FastPathUnsupported("no Content-Length")
        return FastResponse(sock, status, reason, hdrs, bytes(head[end + 4 : got]))
    except BaseException:
        sock.close()
        raise
