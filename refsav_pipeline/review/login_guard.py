"""Backoff for failed logins, per user name and per client address, in front of Gradio's
``/login`` route (whose auth callable sees neither the address nor the response).

From the ``FREE_FAILURES``-th failure on, every further failure doubles the wait before the
next attempt is even checked (1 s, 2 s, 4 s ... capped); a blocked attempt gets ``429`` with
``Retry-After`` and is not checked at all, so guessing costs time, not just CPU. A success
clears the user's and the address's counts. Every failure is logged with name and address.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

log = logging.getLogger("refsav.review.login")

FREE_FAILURES = 4  # the 5th failure starts the backoff
BASE_DELAY_S = 1.0
MAX_DELAY_S = 900.0
MAX_BODY = 64 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


@dataclass
class _Count:
    failures: int = 0
    blocked_until: float = 0.0


class LoginThrottle:
    """Failure counts and block times; thread-safe, clock injectable for tests."""

    def __init__(self, free: int = FREE_FAILURES, base: float = BASE_DELAY_S,
                 cap: float = MAX_DELAY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.free, self.base, self.cap, self.clock = free, base, cap, clock
        self._counts: dict[str, _Count] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _keys(user: str, address: str) -> tuple[str, str]:
        return f"user:{user.lower()}", f"addr:{address}"

    def retry_after(self, user: str, address: str) -> float:
        """Seconds until an attempt for ``user`` from ``address`` may be checked (0: now)."""
        now = self.clock()
        with self._lock:
            return max(max((c.blocked_until - now for k in self._keys(user, address)
                            if (c := self._counts.get(k))), default=0.0), 0.0)

    def failure(self, user: str, address: str) -> tuple[int, float]:
        """Count a failure; returns (failures of this user, delay now imposed in seconds)."""
        now = self.clock()
        worst = 0.0
        with self._lock:
            counts = [self._counts.setdefault(k, _Count()) for k in self._keys(user, address)]
            for c in counts:
                c.failures += 1
                if c.failures > self.free:
                    delay = min(self.base * 2 ** (c.failures - self.free - 1), self.cap)
                    c.blocked_until = now + delay
                    worst = max(worst, delay)
            return counts[0].failures, worst

    def success(self, user: str, address: str) -> None:
        with self._lock:
            for k in self._keys(user, address):
                self._counts.pop(k, None)


class LoginGuard:
    """ASGI middleware: throttles ``POST .../login`` and learns each outcome from its status."""

    def __init__(self, app: Callable[..., Awaitable[None]], throttle: LoginThrottle) -> None:
        self.app = app
        self.throttle = throttle

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if (scope["type"] != "http" or scope.get("method") != "POST"
                or not scope.get("path", "").rstrip("/").endswith("/login")):
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if len(body) > MAX_BODY:
                await _reply(send, 413, "login form too large")
                return
            if not msg.get("more_body"):
                break
        form = parse_qs(body.decode("utf-8", "replace"))
        user = (form.get("username") or [""])[0].strip()[:128]
        address = (scope.get("client") or ("unknown", 0))[0]
        wait = self.throttle.retry_after(user, address)
        if wait > 0:
            seconds = math.ceil(wait)
            log.warning("login blocked for user=%r from %s: retry in %d s", user, address,
                        seconds)
            await _reply(send, 429, f"Too many failed logins: try again in {seconds} s.",
                         {"retry-after": str(seconds)})
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        status: list[int] = []

        async def capture(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                status.append(int(msg["status"]))
            await send(msg)

        await self.app(scope, replay, capture)
        if status and status[0] == 200:
            self.throttle.success(user, address)
        elif status and status[0] in (400, 401, 403):
            n, delay = self.throttle.failure(user, address)
            log.warning("failed login for user=%r from %s (%d failures%s)", user, address, n,
                        f"; next attempt in {delay:.0f} s" if delay else "")


async def _reply(send: Callable[[Message], Awaitable[None]], code: int, detail: str,
                 headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": code, "headers": raw})
    await send({"type": "http.response.body", "body": body})
