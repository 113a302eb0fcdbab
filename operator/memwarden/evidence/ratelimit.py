"""Per-client token buckets: how many TokenReviews one address may make memwarden send.

Every read of the evidence API with an unknown bearer token costs a TokenReview on the
API server. Without a bound, anyone who reaches the port could turn memwarden into an
amplifier against its own API server, and fill the operator's worker threads. A client
(an address) holds a bucket of ``burst`` reviews that refills at ``rate`` per second.

Pure: the clock is passed in; no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["RateLimiter"]


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets by client key, the least recently seen forgotten past ``max_clients``
    (a forgotten client starts again with a full bucket: the cap bounds memory, not
    fairness)."""

    def __init__(self, *, rate: float, burst: int, max_clients: int = 10_000) -> None:
        if rate <= 0 or burst < 1 or max_clients < 1:
            raise ValueError("rate must be positive, burst and max_clients at least 1")
        self._rate = rate
        self._burst = float(burst)
        self._max = max_clients
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, client: str, *, now: float) -> float:
        """Take one token for ``client``: 0.0 when granted, else the seconds until one is."""
        bucket = self._buckets.pop(client, None)
        if bucket is None:
            bucket = _Bucket(tokens=self._burst, updated=now)
        elapsed = max(now - bucket.updated, 0.0)
        bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
        bucket.updated = now
        self._buckets[client] = bucket  # most recently seen last
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self._rate
