"""Backoff for failed logins, inside the authentication function Gradio calls.

Why there: the function receives exactly the user name and password that are checked, so a
form with a field twice (a decoy name first, the victim's last) is counted against the name
really tried. The client address comes from the request (``ClientAddress`` middleware), after
uvicorn has applied ``X-Forwarded-For`` from trusted proxies only (``trusted_proxies``; none by
default, so a client cannot pick its own address).

Failures are counted per (user, address) pair and summed two ways: per user (from any
address) and per address (against any user). From the ``FREE_FAILURES``-th failure on, every
further failure of a sum doubles the wait before the next attempt is even checked (1 s, 2 s,
4 s ... capped); a blocked attempt gets ``429`` with ``Retry-After`` and is not checked at all,
so guessing costs time, not just CPU. A success clears only that user's failures from that
address: an attacker logging into their own account never clears the address's failures
against other users. Every failure is logged with name and address.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import HTTPException

log = logging.getLogger("refsav.review.login")

FREE_FAILURES = 4  # the 5th failure starts the backoff
BASE_DELAY_S = 1.0
MAX_DELAY_S = 900.0
FORGET_AFTER_S = 86_400.0  # failures older than this are dropped (bounded memory)
PRUNE_AT = 4096  # pairs held before old ones are looked for
NAME_CHARS = 128

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]

client_address: ContextVar[str] = ContextVar("refsav_review_client_address", default="unknown")


@dataclass(slots=True)
class _Failures:
    count: int = 0
    last: float = 0.0


class LoginThrottle:
    """Failure counts per (user, address); thread-safe, clock injectable for tests."""

    def __init__(self, free: int = FREE_FAILURES, base: float = BASE_DELAY_S,
                 cap: float = MAX_DELAY_S, clock: Callable[[], float] = time.monotonic,
                 forget_after: float = FORGET_AFTER_S) -> None:
        self.free, self.base, self.cap, self.clock = free, base, cap, clock
        self.forget_after = forget_after
        self._by_user: dict[str, dict[str, _Failures]] = {}
        self._by_addr: dict[str, dict[str, _Failures]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _user(user: str) -> str:
        return user.strip().lower()[:NAME_CHARS]

    def _delay(self, failures: int) -> float:
        if failures <= self.free:
            return 0.0
        return min(self.base * 2 ** (failures - self.free - 1), self.cap)

    def _blocked_until(self, group: dict[str, _Failures] | None) -> float:
        if not group:
            return 0.0
        n = sum(f.count for f in group.values())
        return max(f.last for f in group.values()) + self._delay(n) if n > self.free else 0.0

    def retry_after(self, user: str, address: str) -> float:
        """Seconds until an attempt for ``user`` from ``address`` may be checked (0: now)."""
        now = self.clock()
        user = self._user(user)
        with self._lock:
            until = max(self._blocked_until(self._by_user.get(user)),
                        self._blocked_until(self._by_addr.get(address)))
        return max(until - now, 0.0)

    def failure(self, user: str, address: str) -> tuple[int, float]:
        """Count a failure; returns (failures of this user, delay now imposed in seconds)."""
        now = self.clock()
        user = self._user(user)
        with self._lock:
            pair = self._by_user.setdefault(user, {}).get(address)
            if pair is None:
                pair = _Failures()
                self._by_user[user][address] = pair
                self._by_addr.setdefault(address, {})[user] = pair
                self._prune(now)
            pair.count += 1
            pair.last = now
            of_user = sum(f.count for f in self._by_user[user].values())
            of_addr = sum(f.count for f in self._by_addr[address].values())
            return of_user, max(self._delay(of_user), self._delay(of_addr))

    def success(self, user: str, address: str) -> None:
        """Clear this user's failures from this address, and nothing else."""
        user = self._user(user)
        with self._lock:
            self._drop(user, address)

    def _drop(self, user: str, address: str) -> None:
        for outer, inner, index in ((user, address, self._by_user),
                                    (address, user, self._by_addr)):
            group = index.get(outer)
            if group is not None:
                group.pop(inner, None)
                if not group:
                    del index[outer]

    def _prune(self, now: float) -> None:
        pairs = sum(len(g) for g in self._by_user.values())
        if pairs < PRUNE_AT:
            return
        old = [(u, a) for u, g in self._by_user.items() for a, f in g.items()
               if now - f.last > self.forget_after]
        for u, a in old:
            self._drop(u, a)


def throttled_auth(check: Callable[[str, str], bool], throttle: LoginThrottle
                   ) -> Callable[[str, str], Awaitable[bool]]:
    """The callable for ``launch(auth=...)``: ``check`` (slow hashing, run in a worker
    thread) behind ``throttle``, for the address of the request being served."""

    async def authenticate(username: str, password: str) -> bool:
        address = client_address.get()
        user = username[:NAME_CHARS]
        wait = throttle.retry_after(user, address)
        if wait > 0:
            seconds = math.ceil(wait)
            log.warning("login blocked for user=%r from %s: retry in %d s", user, address,
                        seconds)
            raise HTTPException(status_code=429,
                                detail=f"Too many failed logins: try again in {seconds} s.",
                                headers={"Retry-After": str(seconds)})
        if await anyio.to_thread.run_sync(check, username, password):
            throttle.success(user, address)
            return True
        n, delay = throttle.failure(user, address)
        log.warning("failed login for user=%r from %s (%d failures%s)", user, address, n,
                    f"; next attempt in {delay:.0f} s" if delay else "")
        return False

    return authenticate


class ClientAddress:
    """ASGI middleware: makes the request's client address (as uvicorn resolved it, proxies
    applied) visible to ``throttled_auth``, which Gradio calls with the form fields only."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = client_address.set((scope.get("client") or ("unknown", 0))[0])
        try:
            await self.app(scope, receive, send)
        finally:
            client_address.reset(token)


_ENV_LOCK = threading.Lock()
FORWARDED_ENV = "FORWARDED_ALLOW_IPS"


@contextlib.contextmanager
def trusted_proxies(ips: str) -> Iterator[None]:
    """While starting a server: uvicorn trusts ``X-Forwarded-For`` only from ``ips`` (comma
    separated addresses or networks, ``*`` for any; ``""``: none). Gradio does not pass this
    setting to uvicorn, whose default trusts loopback, so it is given through uvicorn's own
    environment variable for the duration of the start, then restored."""
    with _ENV_LOCK:
        before = os.environ.get(FORWARDED_ENV)
        os.environ[FORWARDED_ENV] = ips
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(FORWARDED_ENV, None)
            else:
                os.environ[FORWARDED_ENV] = before
