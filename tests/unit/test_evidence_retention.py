"""Retention: everything too old, then a namespace's oldest until it fits its quota."""

from __future__ import annotations

import datetime as dt

import pytest

from memwarden.evidence.adapters.store import Entry, retention_plan
from memwarden_testing.evidence import T0, make_entry

H = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)


def _names(entries: list[Entry]) -> list[str]:
    return [e.incident for e in entries]


PLANS = [
    pytest.param([], 7 * DAY, 1000, [], id="nothing-stored"),
    pytest.param(
        [make_entry("a", age=H), make_entry("b", age=2 * H)], 7 * DAY, 1000, [], id="all-fit"
    ),
    pytest.param(
        [make_entry("new", age=H), make_entry("old", age=8 * DAY)],
        7 * DAY,
        None,
        ["old"],
        id="too-old",
    ),
    pytest.param(
        [make_entry("edge", age=7 * DAY)], 7 * DAY, None, [], id="exactly-max-age-is-kept"
    ),
    pytest.param(
        [
            make_entry("c", age=1 * H, size=400),
            make_entry("a", age=3 * H, size=400),
            make_entry("b", age=2 * H, size=400),
        ],
        None,
        900,
        ["a"],
        id="oldest-first-until-the-namespace-fits-its-quota",
    ),
    pytest.param(
        [
            make_entry("c", age=1 * H, size=400),
            make_entry("a", age=3 * H, size=400),
            make_entry("b", age=2 * H, size=400),
        ],
        None,
        799,
        ["a", "b"],
        id="quota-needs-two",
    ),
    pytest.param(
        [make_entry("a", age=H, size=500)], None, 500, [], id="exactly-at-the-quota-is-kept"
    ),
    pytest.param(
        [
            make_entry("fresh", age=H, size=600),
            make_entry("mid", age=2 * DAY, size=600),
            make_entry("ancient", age=30 * DAY, size=10),
        ],
        7 * DAY,
        1000,
        ["ancient", "mid"],
        id="age-and-quota-together",
    ),
    pytest.param(
        [make_entry("a", age=30 * DAY, size=10**9)], None, None, [], id="no-limits-keep-all"
    ),
    pytest.param(
        [
            make_entry("old", namespace="quiet", age=5 * DAY, size=600),
            make_entry("x", namespace="busy", age=2 * H, size=600),
            make_entry("y", namespace="busy", age=H, size=600),
        ],
        None,
        1000,
        ["x"],
        id="only-the-namespace-over-its-quota-loses-bundles",
    ),
]


@pytest.mark.parametrize(("entries", "max_age", "quota", "expected"), PLANS)
def test_retention_plan(
    entries: list[Entry], max_age: dt.timedelta | None, quota: int | None, expected: list[str]
) -> None:
    plan = retention_plan(entries, now=T0, max_age=max_age, namespace_max_bytes=quota)
    assert _names(plan) == expected
    assert [e.stored_at for e in plan] == sorted(e.stored_at for e in plan), "oldest first"


def test_a_namespace_under_its_quota_keeps_every_bundle_whatever_the_total() -> None:
    """Retention never deletes one namespace's evidence to make room for another's: no
    total cap is applied here (uploads that do not fit are refused instead)."""
    entries = [
        make_entry(f"i{n}", namespace=f"ns{n % 5}", age=n * H, size=10**9) for n in range(40)
    ]
    assert retention_plan(entries, now=T0, max_age=None, namespace_max_bytes=8 * 10**9) == []


def test_the_plan_leaves_each_namespace_under_its_quota() -> None:
    entries = [
        make_entry(f"i{n}", namespace=f"ns{n % 3}", age=n * H, size=100 + 37 * n) for n in range(40)
    ]
    plan = retention_plan(entries, now=T0, max_age=None, namespace_max_bytes=3000)
    kept = [e for e in entries if e not in plan]
    for namespace in {e.namespace for e in entries}:
        mine = [e for e in kept if e.namespace == namespace]
        gone = [e for e in plan if e.namespace == namespace]
        assert sum(e.bytes for e in mine) <= 3000
        if gone:
            assert min(e.stored_at for e in mine) > max(e.stored_at for e in gone), "newest kept"
