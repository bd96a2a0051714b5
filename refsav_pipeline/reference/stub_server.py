"""A minimal OpenAI-compatible server: fixed latency, fixed answers, no pixel work.

It measures the model stage's own cost. The reference server looks at every image (that is
its job), so a benchmark against it measures its pixel work as much as ours; this one reads
a request, waits ``latency_s`` and answers a fixed caption, or a fixed consistent verdict when
the request asks for structured output. Each answer ends with a checksum of the request, so
different requests get different answers and the next call in a chain is never a cache hit.
Plain asyncio HTTP/1.1 with keep-alive: thousands of connections at a few tens of
microseconds each. It counts requests and the most in flight
(``GET /stats``).

    python -m refsav_pipeline.reference.stub_server --port 8900 --latency 2 --models a,b
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
import zlib
from dataclasses import dataclass, field

CAPTION = "A red object in the middle of the frame"


@dataclass
class StubStats:
    requests: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    bytes_in: int = 0
    done_at: list[float] = field(default_factory=list)  # monotonic time of each answer


def _response(status: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


def _completion(text: str) -> bytes:
    return json.dumps({
        "id": "stub", "object": "chat.completion", "created": 0, "model": "stub",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
    }).encode()


class StubServer:
    """Serve ``models`` on 127.0.0.1:``port`` (0: any free port), in this process."""

    def __init__(self, models: list[str], latency_s: float, port: int = 0) -> None:
        self.latency_s = latency_s
        self.port = port
        self.stats = StubStats()
        self._models = _response("200 OK", json.dumps(
            {"object": "list", "data": [{"id": m, "object": "model"} for m in models]}).encode())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        st = self.stats
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length) if length else b""
                st.bytes_in += len(head) + length
                if head.startswith(b"GET /v1/models"):
                    writer.write(self._models)
                elif head.startswith(b"GET /stats"):
                    writer.write(_response("200 OK", json.dumps(vars(st)).encode()))
                    st.done_at = []  # handed out once
                elif head.startswith(b"POST /v1/chat/completions"):
                    st.requests += 1
                    st.in_flight += 1
                    st.peak_in_flight = max(st.peak_in_flight, st.in_flight)
                    try:
                        await asyncio.sleep(self.latency_s)
                    finally:
                        st.in_flight -= 1
                    st.done_at.append(time.monotonic())
                    text = f"{CAPTION} (#{zlib.crc32(body):08x})."
                    if b'"response_format"' in body:
                        text = json.dumps({"consistent": True, "reason": "both say red",
                                           "description": text})
                    writer.write(_response("200 OK", _completion(text)))
                else:
                    writer.write(_response("404 Not Found", b'{"error": "not found"}'))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError,
                asyncio.CancelledError):  # client gone, or the server stopping
            pass
        finally:
            writer.close()

    async def serve(self) -> None:
        """Serve until ``stop()``; then close every connection."""
        self._stop = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port,
                                                  backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]
        await self._stop.wait()
        self._server.close()
        handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in handlers:
            t.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    def __enter__(self) -> StubServer:
        ready = threading.Event()

        def main() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.call_soon(ready.set)
            self._loop.run_until_complete(self.serve())
            self._loop.close()

        self._thread = threading.Thread(target=main, name="stub-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        deadline = time.monotonic() + 10
        while self._server is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--models", required=True, help="served model names, comma separated")
    args = ap.parse_args()
    srv = StubServer(args.models.split(","), args.latency, args.port)

    async def run() -> None:
        task = asyncio.create_task(srv.serve())
        while srv._server is None:
            await asyncio.sleep(0.01)
        print(f"stub server at {srv.url}", flush=True)
        await task

    asyncio.run(run())


if __name__ == "__main__":
    main()
