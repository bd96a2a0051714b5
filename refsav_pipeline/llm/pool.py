"""HTTP connections for one endpoint, sized to its concurrency, at a flat cost per request.

httpcore scans every pooled connection on every request, so one big pool makes each request
cost more the more requests are in flight (measured: a third to two thirds of the caption
actor's CPU at 64-256 in flight). An endpoint therefore gets its own connections, split into
stripes of at most ``STRIPE`` connections, each stripe an ``httpx.AsyncClient``; a request takes
the least busy stripe. With the endpoint's semaphore bounding requests to its concurrency, the
least busy stripe always has a free connection, and no scan is longer than one stripe.
"""

from __future__ import annotations

from typing import Any

import httpx

STRIPE = 32
"""Connections per ``httpx.AsyncClient``: long enough to reuse connections, short to scan."""


class EndpointPool:
    """Keep-alive connections to one base URL for up to ``max_concurrency`` requests at once."""

    def __init__(self, max_concurrency: int, timeout: httpx.Timeout) -> None:
        self.max_concurrency = max_concurrency
        n = max(1, -(-max_concurrency // STRIPE))
        size = -(-max_concurrency // n) + 1  # +1: a health probe never waits for a slot
        self._stripes = [httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
            trust_env=False)  # never route loopback/cluster traffic via a proxy
            for _ in range(n)]
        self._busy = [0] * n
        self._size = size

    @property
    def stripes(self) -> int:
        return len(self._stripes)

    @property
    def connections(self) -> int:
        """Connections this pool may open at most (all stripes)."""
        return self._size * len(self._stripes)

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        i = min(range(len(self._busy)), key=self._busy.__getitem__)
        self._busy[i] += 1
        try:
            return await self._stripes[i].request(method, url, **kwargs)
        finally:
            self._busy[i] -= 1

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("POST", url, **kwargs)

    async def aclose(self) -> None:
        for c in self._stripes:
            await c.aclose()
