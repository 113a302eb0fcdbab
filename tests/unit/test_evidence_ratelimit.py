"""Per-client token buckets for TokenReviews: pure, with the clock passed in."""

from __future__ import annotations

import pytest

from memwarden.evidence.ratelimit import RateLimiter

pytestmark = pytest.mark.unit


def test_a_burst_then_the_rate() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.take("10.0.0.1", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("10.0.0.1", now=0.0) == pytest.approx(0.5)
    assert limiter.take("10.0.0.1", now=0.5) == 0.0, "one token back after 1/rate seconds"
    assert limiter.take("10.0.0.1", now=0.5) > 0


def test_clients_have_their_own_buckets() -> None:
    limiter = RateLimiter(rate=1.0, burst=1)
    assert limiter.take("10.0.0.1", now=0.0) == 0.0
    assert limiter.take("10.0.0.1", now=0.0) > 0
    assert limiter.take("10.0.0.2", now=0.0) == 0.0


def test_a_bucket_refills_to_the_burst_only() -> None:
    limiter = RateLimiter(rate=1.0, burst=2)
    limiter.take("a", now=0.0)
    assert [limiter.take("a", now=1000.0) for _ in range(3)][-1] > 0


def test_memory_is_bounded_by_forgetting_the_least_recent() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_clients=2)
    limiter.take("a", now=0.0)
    limiter.take("b", now=0.0)
    limiter.take("c", now=0.0)  # forgets a
    assert limiter.take("a", now=0.0) == 0.0, "a forgotten client starts with a full bucket"
    assert limiter.take("c", now=0.0) > 0
