"""HTTP/1.1 keep-alive connections to one endpoint, at a flat cost per request.

Why not one ``httpx.AsyncClient``: httpcore scans every pooled connection on every request
(``_assign_requests_to_connections``) and goes through anyio and sniffio on every socket
operation, so a request cost ~1-2 ms of CPU and grew with the pool (a third to two thirds of the
caption actor's CPU at 64-256 in flight). The model stage needs exactly one kind of exchange: a
JSON POST (or a GET) answered with a body. This pool does that on asyncio protocols: idle
connections wait in a deque (taking one is O(1)), a request is one ``write`` and the answer is
parsed from the bytes as they arrive (``Content-Length`` or chunked). Answers are small
``Response`` objects with httpx's reading API (``status_code``, ``headers.get``, ``text``,
``json()``) and failures raise httpx's exception types, so callers handle both exactly as with
httpx. Bodies are encoded with orjson (the images' base64 dominates a request's bytes).

Each endpoint gets its own pool; the client's per-endpoint semaphore bounds how many
connections it opens. A connection the server closed while idle is dropped when taken; one that
fails before any byte of the answer arrives is retried once on a fresh connection (as HTTP
clients do for stale keep-alive connections).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

_Answer = tuple[int, list[tuple[bytes, bytes]], bytes, bool]  # status, headers, body, keep-alive


@dataclass
class Response:
    """An HTTP answer: what the model client reads of ``httpx.Response``, without its cost."""

    status_code: int
    headers: dict[str, str]  # lower-case names
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """orjson: the stdlib's ``json.loads`` was a tenth of a request's CPU in the actor.
        Its errors are ``json.JSONDecodeError``s (``ValueError``), as httpx's."""
        return orjson.loads(self.content)


class _Stale(Exception):
    """The connection died before any byte of the answer: safe to retry on a new one."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = bytearray()
        self._waiter: asyncio.Future[_Answer] | None = None
        self._head: tuple[int, list[tuple[bytes, bytes]], int] | None = None  # body starts at
        self._length: int | None = None
        self._chunked = False
        self._until_close = False

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._waiter is not None and not self._waiter.done():
            self._parse()

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        w = self._waiter
        if w is None or w.done():
            return
        if self._head is not None and self._until_close:
            status, headers, start = self._head
            w.set_result((status, headers, bytes(self._buf[start:]), False))
        elif not self._buf:
            w.set_exception(_Stale(repr(exc)))
        else:
            w.set_exception(httpx.RemoteProtocolError(
                f"connection closed in the middle of a response ({exc!r})"))

    # -- one exchange ---------------------------------------------------------------------

    async def exchange(self, data: bytes) -> _Answer:
        """Send one request; (status, headers, body, keep-alive) of its answer."""
        assert self.transport is not None
        self._buf.clear()
        self._head, self._length, self._chunked, self._until_close = None, None, False, False
        self._waiter = asyncio.get_running_loop().create_future()
        if self.closed:
            raise _Stale("closed while idle")
        self.transport.write(data)
        return await self._waiter

    def _parse(self) -> None:
        assert self._waiter is not None
        buf = self._buf
        if self._head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(buf[:end]).split(b"\r\n")
            try:
                status = int(lines[0].split(b" ", 2)[1])
            except (IndexError, ValueError):
                self._waiter.set_exception(httpx.RemoteProtocolError(
                    f"bad status line {lines[0][:80]!r}"))
                return
            headers = []
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name, value = name.strip().lower(), value.strip()
                headers.append((name, value))
                if name == b"content-length":
                    self._length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    self._chunked = True
            self._head = (status, headers, end + 4)
            if self._length is None and not self._chunked:
                self._until_close = status not in (204, 304) and not 100 <= status < 200
                if not self._until_close:
                    self._length = 0
        status, headers, start = self._head
        if self._until_close:
            return  # the body ends when the server closes
        if self._length is not None:
            if len(buf) - start >= self._length:
                body = bytes(buf[start:start + self._length])
                self._waiter.set_result((status, headers, body, _keep_alive(headers)))
            return
        body = _dechunk(buf, start)
        if body is not None:
            self._waiter.set_result((status, headers, body, _keep_alive(headers)))


def _keep_alive(headers: list[tuple[bytes, bytes]]) -> bool:
    return not any(n == b"connection" and v.lower() == b"close" for n, v in headers)


def _dechunk(buf: bytearray, pos: int) -> bytes | None:
    """The body of a complete chunked message starting at ``pos``, or None if incomplete."""
    out = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        if size == 0:  # then optional trailers, then an empty line
            return bytes(out) if buf.find(b"\r\n\r\n", eol) >= 0 else None
        if len(buf) < eol + 2 + size + 2:
            return None
        out += buf[eol + 2:eol + 2 + size]
        pos = eol + 2 + size + 2


class EndpointPool:
    """Keep-alive connections to one base URL, for up to ``max_concurrency`` requests at once
    (the caller's semaphore enforces it; the pool keeps that many idle at most)."""

    def __init__(self, max_concurrency: int, timeout: httpx.Timeout) -> None:
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self._idle: deque[_Connection] = deque()
        self._open: set[_Connection] = set()
        self._targets: dict[str, tuple[str, int, bool, bytes, bytes]] = {}
        self._ssl: ssl.SSLContext | None = None

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._open)

    def _target(self, url: str) -> tuple[str, int, bool, bytes, bytes]:
        t = self._targets.get(url)
        if t is None:
            u = urlsplit(url)
            tls = u.scheme == "https"
            host = u.hostname or "localhost"
            port = u.port or (443 if tls else 80)
            path = (u.path or "/") + (f"?{u.query}" if u.query else "")
            t = (host, port, tls, path.encode(), (u.netloc or host).encode())
            self._targets[url] = t
        return t

    async def _connect(self, host: str, port: int, tls: bool) -> _Connection:
        if tls and self._ssl is None:
            self._ssl = ssl.create_default_context()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout.connect):
                _, conn = await loop.create_connection(
                    _Connection, host, port, ssl=self._ssl if tls else None)
        except TimeoutError as e:
            raise httpx.ConnectTimeout(f"connect to {host}:{port} timed out") from e
        except OSError as e:
            raise httpx.ConnectError(f"connect to {host}:{port}: {e}") from e
        self._open.add(conn)
        return conn

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()  # most recently used: least likely to have timed out
            if not conn.closed:
                return conn
            self._open.discard(conn)
        return None

    def _drop(self, conn: _Connection) -> None:
        self._open.discard(conn)
        if conn.transport is not None:
            conn.transport.close()

    async def request(self, method: str, url: str, *, json: Any = None,
                      content: bytes | None = None, headers: dict[str, str] | None = None,
                      timeout: float | None = None) -> Response:
        host, port, tls, path, netloc = self._target(url)
        body = orjson.dumps(json) if json is not None else (content or b"")
        head = [b"%s %s HTTP/1.1\r\nHost: %s\r\nAccept: */*\r\n" % (method.encode(), path,
                                                                     netloc)]
        if json is not None:
            head.append(b"Content-Type: application/json\r\n")
        if body or method not in ("GET", "HEAD"):
            head.append(b"Content-Length: %d\r\n" % len(body))
        for k, v in (headers or {}).items():
            head.append(f"{k}: {v}\r\n".encode())
        data = b"".join(head) + b"\r\n" + body
        try:
            if timeout is None:
                return await self._send(method, url, host, port, tls, data)
            async with asyncio.timeout(timeout):
                return await self._send(method, url, host, port, tls, data)
        except TimeoutError as e:
            raise httpx.ReadTimeout(f"{method} {url} timed out") from e

    async def _send(self, method: str, url: str, host: str, port: int, tls: bool,
                    data: bytes) -> Response:
        for attempt in (0, 1):
            conn = self._take_idle()
            fresh = conn is None
            if conn is None:
                conn = await self._connect(host, port, tls)
            try:
                status, headers, body, keep = await conn.exchange(data)
            except _Stale as e:
                self._drop(conn)
                if fresh or attempt:
                    raise httpx.ReadError(f"{method} {url}: connection lost ({e})") from None
                continue
            except BaseException:
                self._drop(conn)  # timed out or cancelled mid-answer: never reused
                raise
            if keep and len(self._idle) < self.max_concurrency:
                self._idle.append(conn)
            else:
                self._drop(conn)
            return Response(status, {n.decode("latin-1"): v.decode("latin-1")
                                     for n, v in headers}, body)
        raise AssertionError("unreachable")

    async def get(self, url: str, **kwargs: Any) -> Response:
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> Response:
        return await self.request("POST", url, **kwargs)

    async def aclose(self) -> None:
        for conn in list(self._open):
            self._drop(conn)
        self._idle.clear()
