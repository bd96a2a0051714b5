"""A misbehaving load balancer on loopback: forwards to a model server, or fails for a while.

What the client must ride out in production, reproduced over real HTTP: a load balancer that
answers 503 while a vLLM replica restarts, 429 with ``Retry-After``, connections reset,
completions that hang, or a server answering 200 with a body the client cannot use.
``FaultProxy.fail`` turns one of these on for a window of time (or until ``heal``); everything
else, and every request outside the window, is forwarded unchanged.
Faults hit only ``POST …/chat/completions`` (``GET /v1/models`` keeps answering, as it does
behind a real balancer), optionally only requests whose body contains ``match``.

    with ReferenceServer(models) as srv, FaultProxy(srv.url) as proxy:
        proxy.fail("status", seconds=30, status=503)
        ... point the client at proxy.url ...
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import httpx

Mode = Literal["status", "reset", "hang", "answer"]
FAULTED_PATH = "/chat/completions"


@dataclass(frozen=True)
class Fault:
    mode: Mode
    until: float  # monotonic end of the window (inf: until healed)
    status: int = 503
    retry_after: float | None = None
    match: bytes | None = None
    body: bytes = b""  # the answer of mode "answer"

    def applies(self, method: str, path: str, body: bytes) -> bool:
        return (time.monotonic() < self.until and method == "POST"
                and path.endswith(FAULTED_PATH)
                and (self.match is None or self.match in body))


class FaultProxy:
    """Listen on 127.0.0.1 (``port`` 0: any free port) in a thread of this process."""

    def __init__(self, upstream: str, port: int = 0) -> None:
        """``upstream``: the model server's base URL (``http://host:port/v1``)."""
        self.upstream = upstream.rstrip("/").removesuffix("/v1")
        self.port = port
        self.stats: Counter[str] = Counter()  # forwarded, and each mode's faults
        self._fault: Fault | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def fail(self, mode: Mode, seconds: float | None = None, *, status: int = 503,
             retry_after: float | None = None, match: bytes | None = None,
             body: bytes = b"") -> None:
        """From now on, for ``seconds`` (None: until ``heal``), completions fail: answered with
        ``status`` (and ``Retry-After``), reset, held without an answer, or answered 200 with
        ``body`` (mode "answer")."""
        until = float("inf") if seconds is None else time.monotonic() + seconds
        self._fault = Fault(mode, until, status, retry_after, match, body)

    def heal(self) -> None:
        self._fault = None

    # -- the server ------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._serve, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._client = httpx.AsyncClient(base_url=self.upstream, trust_env=False,
                                         timeout=httpx.Timeout(None),
                                         limits=httpx.Limits(max_connections=None))
        self._server = loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", self.port))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._client.aclose())
            loop.close()

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                method, path, headers, body = request
                fault = self._fault
                if fault is not None and fault.applies(method, path, body):
                    self.stats[fault.mode] += 1
                    if fault.mode in ("status", "answer"):
                        writer.write(_error_answer(fault) if fault.mode == "status" else
                                     _answer(200, "application/json", fault.body))
                        await writer.drain()
                        continue
                    if fault.mode == "hang":
                        while time.monotonic() < fault.until and self._fault is fault:
                            await asyncio.sleep(0.05)
                    _reset(writer)
                    return
                self.stats["forwarded"] += 1
                r = await self._client.request(method, path, content=body, headers={
                    k: v for k, v in headers.items() if k in ("content-type", "authorization")})
                writer.write(_answer(r.status_code, r.headers.get("content-type", ""),
                                     r.content))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, httpx.HTTPError):
            pass
        finally:
            writer.close()


async def _read_request(reader: asyncio.StreamReader
                        ) -> tuple[str, str, dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return method, path, headers, body


def _answer(status: int, content_type: str, body: bytes,
            extra: dict[str, str] | None = None) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"content-type: {content_type}",
            f"content-length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _error_answer(fault: Fault) -> bytes:
    extra = {} if fault.retry_after is None else {"retry-after": f"{fault.retry_after:g}"}
    body = b'{"error": {"message": "injected by the fault proxy", "code": %d}}' % fault.status
    return _answer(fault.status, "application/json", body, extra)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (what a crashed balancer or replica does), not a clean FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
