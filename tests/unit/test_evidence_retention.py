"""Retention: everything too old, then the oldest until the rest fits the byte cap."""

from __future__ import annotations

import datetime as dt

import pytest

from memwarden.evidence.store import Entry, retention_plan
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
        id="oldest-first-until-under-the-cap",
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
        id="cap-needs-two",
    ),
    pytest.param(
        [make_entry("a", age=H, size=500)], None, 500, [], id="exactly-at-the-cap-is-kept"
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
        id="age-and-cap-together",
    ),
    pytest.param(
        [make_entry("huge", age=H, size=5000)],
        None,
        1000,
        ["huge"],
        id="a-single-bundle-over-the-cap",
    ),
    pytest.param(
        [make_entry("a", age=30 * DAY, size=10**9)], None, None, [], id="no-limits-keep-all"
    ),
    pytest.param(
        [
            make_entry("x", namespace="b", age=H, size=600),
            make_entry("x", namespace="a", age=H, size=600),
        ],
        None,
        1000,
        ["x"],
        id="same-age-ties-by-namespace",
    ),
]


@pytest.mark.parametrize(("entries", "max_age", "max_total", "expected"), PLANS)
def test_retention_plan(
    entries: list[Entry], max_age: dt.timedelta | None, max_total: int | None, expected: list[str]
) -> None:
    plan = retention_plan(entries, now=T0, max_age=max_age, max_total_bytes=max_total)
    assert _names(plan) == expected
    assert [e.stored_at for e in plan] == sorted(e.stored_at for e in plan), "oldest first"


def test_ties_are_broken_by_namespace() -> None:
    entries = [
        make_entry("x", namespace="b", age=H, size=600),
        make_entry("x", namespace="a", age=H, size=600),
    ]
    plan = retention_plan(entries, now=T0, max_age=None, max_total_bytes=1000)
    assert [e.namespace for e in plan] == ["a"]


def test_the_plan_leaves_the_rest_under_the_cap() -> None:
    entries = [make_entry(f"i{n}", age=n * H, size=100 + 37 * n) for n in range(40)]
    plan = retention_plan(entries, now=T0, max_age=None, max_total_bytes=3000)
    kept = [e for e in entries if e not in plan]
    assert sum(e.bytes for e in kept) <= 3000
    assert min(e.stored_at for e in kept) > max(e.stored_at for e in plan), "newest are kept"
