"""Waiting for an OpenAI-compatible server this project started to come up.

One poll of ``GET /v1/models`` for all of them: vLLM replicas (local or on Ray), the offline
reference server, the server a cluster job starts. They differ only in whether a model name
must be listed and in how the caller knows its server process died.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx


class ServerExited(RuntimeError):
    """The server's process ended before it answered: waiting longer cannot help."""


def wait_healthy(url: str, served_name: str | None, timeout_s: float,
                 alive: Callable[[], bool] = lambda: True, poll_s: float = 5.0) -> None:
    """Poll ``{url}/models`` until it answers 200 (listing ``served_name``, if given).

    ``ServerExited`` as soon as ``alive()`` is false, ``TimeoutError`` after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        request_s = max(0.1, min(5.0, deadline - time.monotonic()))
        try:
            r = httpx.get(f"{url}/models", timeout=request_s, trust_env=False)
            if r.status_code == 200 and (served_name is None or served_name in {
                    m.get("id") for m in r.json()["data"]}):
                return
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
            pass  # not up yet, or not an OpenAI server yet: ask again
        if not alive():
            who = f"server for {served_name}" if served_name else "server"
            raise ServerExited(f"{who} at {url} exited before it was healthy")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not healthy after {timeout_s:.0f}s")
        time.sleep(poll_s)
