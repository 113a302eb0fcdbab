"""Top functions (flat/cum as ``go tool pprof -top``), goroutine counts and heap diffs,
checked against numbers computed by hand from profiles built in the test."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from memwarden.capture.analysis import (
    AnalysisError,
    FunctionStat,
    diff_profiles,
    function_stats,
    goroutine_count,
    summarize,
    top_functions,
)
from memwarden.capture.profile import Profile, parse_profile
from memwarden_testing.profiles import (
    HEAP_TYPES,
    Frame,
    ProfileBuilder,
    make_goroutine_profile,
    make_profile,
)

pytestmark = pytest.mark.unit

Stacks = Sequence[tuple[Sequence[Frame], int]]


def _profile(stacks: Stacks, *, time_nanos: int = 0) -> Profile:
    return parse_profile(make_profile(stacks, time_nanos=time_nanos))


#: (stacks, expected {function: (flat, cum)}, expected total). Stacks are leaf first;
#: a tuple frame is one location with inlined frames, innermost first.
FLAT_CUM_CASES = [
    pytest.param(
        [(["main.leak"], 100)],
        {"main.leak": (100, 100)},
        100,
        id="single-leaf",
    ),
    pytest.param(
        [
            (["main.leak", "main.handler", "main.main"], 100),
            (["main.alloc", "main.handler", "main.main"], 30),
        ],
        {
            "main.leak": (100, 100),
            "main.alloc": (30, 30),
            "main.handler": (0, 130),
            "main.main": (0, 130),
        },
        130,
        id="shared-callers",
    ),
    pytest.param(
        [
            ([("main.appendInl", "main.store"), "main.main"], 50),
            (["main.store", "main.main"], 20),
        ],
        {
            "main.appendInl": (50, 50),
            "main.store": (20, 70),
            "main.main": (0, 70),
        },
        70,
        id="inlined-leaf-is-innermost-frame",
    ),
    pytest.param(
        [
            (["main.walk", "main.walk", "main.walk", "main.main"], 40),
            (["main.walk", "main.main"], 10),
            (["main.alloc", "main.walk", "main.walk", "main.main"], 5),
        ],
        {"main.walk": (50, 55), "main.main": (0, 55), "main.alloc": (5, 5)},
        55,
        id="recursion-counts-once-in-cum",
    ),
    pytest.param(
        [([("main.f", "main.g"), ("main.g",), "main.f", "main.main"], 7)],
        {"main.f": (7, 7), "main.g": (0, 7), "main.main": (0, 7)},
        7,
        id="recursion-through-inlined-frames",
    ),
    pytest.param(
        [
            (["main.unused", "main.main"], 0),
            (["main.freed", "main.main"], -5),
            (["main.grown", "main.main"], 10),
        ],
        {"main.freed": (-5, -5), "main.grown": (10, 10), "main.main": (0, 5)},
        15,
        id="zero-skipped-negative-kept-total-of-abs",
    ),
    pytest.param(
        [(["0x4000", "main.main"], 8)],
        {"0x4000": (8, 8), "main.main": (0, 8)},
        8,
        id="unsymbolized-leaf-named-by-address",
    ),
    pytest.param(
        [([], 9), (["main.leak"], 1)],
        {"main.leak": (1, 1)},
        10,
        id="empty-stack-counts-in-total-only",
    ),
]


@pytest.mark.parametrize(("stacks", "expected", "total"), FLAT_CUM_CASES)
def test_flat_and_cum_match_hand_computed_values(
    stacks: Stacks, expected: dict[str, tuple[int, int]], total: int
) -> None:
    profile = _profile(stacks)

    stats = function_stats(profile)
    report = top_functions(profile, limit=100)

    assert {s.function: (s.flat, s.cum) for s in stats} == expected
    assert report.total == total
    assert report.functions == stats


def test_order_is_flat_then_name_then_cum_like_pprof() -> None:
    profile = _profile(
        [
            (["b.tie", "z.root"], 10),
            (["a.tie", "y.root"], 10),
            (["c.big"], 30),
            (["d.none", "b.tie", "z.root"], 0),
            (["e.small", "a.tie", "y.root"], 1),
        ]
    )
    assert [s.function for s in function_stats(profile)] == [
        "c.big",
        "a.tie",
        "b.tie",
        "e.small",
        "y.root",
        "z.root",
    ]
    report = top_functions(profile, limit=2)
    assert [s.function for s in report.functions] == ["c.big", "a.tie"]
    assert report.total == 51


@pytest.mark.parametrize(
    ("sample_index", "expected_top"),
    [
        pytest.param(None, FunctionStat("main.leak", 2048, 2048), id="default-inuse-space"),
        pytest.param("alloc_space", FunctionStat("main.leak", 8192, 8192), id="alloc-space"),
        pytest.param("inuse_objects", FunctionStat("main.leak", 2, 2), id="inuse-objects"),
        pytest.param(0, FunctionStat("main.garbage", 100, 100), id="index-0-alloc-objects"),
    ],
)
def test_sample_index_selects_the_value(
    sample_index: str | int | None, expected_top: FunctionStat
) -> None:
    builder = ProfileBuilder(sample_types=HEAP_TYPES)
    builder.sample(["main.leak", "main.main"], 8, 8192, 2, 2048)
    builder.sample(["main.garbage", "main.main"], 100, 1000, 0, 0)
    report = top_functions(parse_profile(builder.gzip()), sample_index=sample_index)
    assert report.functions[0] == expected_top


def test_goroutine_count_sums_sample_values() -> None:
    profile = parse_profile(
        make_goroutine_profile(
            [
                (["runtime.gopark", "main.parkIdleWorker"], 50),
                (["runtime.gopark", "net/http.(*conn).serve"], 3),
                (["runtime/pprof.writeGoroutine"], 1),
            ]
        )
    )
    assert goroutine_count(profile) == 54


def test_goroutine_count_refuses_a_heap_profile() -> None:
    with pytest.raises(AnalysisError, match="not a goroutine profile"):
        goroutine_count(_profile([(["main.leak"], 1)]))


BASE: Stacks = [
    (["main.retainSessionBuffers", "main.main"], 1000),
    (["main.cacheUnboundedResponses", "main.main"], 500),
    (["main.shrinking", "main.main"], 300),
    (["main.stable", "main.main"], 50),
    (["main.gone", "main.main"], 20),
]
LATER: Stacks = [
    (["main.retainSessionBuffers", "main.main"], 5000),
    (["main.cacheUnboundedResponses", "main.main"], 700),
    (["main.shrinking", "main.main"], 100),
    (["main.stable", "main.main"], 50),
    (["main.new", "main.main"], 60),
]


def test_diff_ranks_functions_by_flat_growth() -> None:
    diff = diff_profiles(_profile(BASE, time_nanos=1), _profile(LATER, time_nanos=2))

    assert [(d.function, d.flat_delta) for d in diff.functions] == [
        ("main.retainSessionBuffers", 4000),
        ("main.cacheUnboundedResponses", 200),
        ("main.new", 60),
        ("main.main", 0),  # cum 1870 -> 5910: listed for its cum growth
        ("main.gone", -20),
        ("main.shrinking", -200),
    ]
    main = next(d for d in diff.functions if d.function == "main.main")
    assert (main.base_cum, main.cum, main.cum_delta) == (1870, 5910, 4040)
    assert (diff.base_total, diff.total, diff.total_delta) == (1870, 5910, 4040)
    assert (diff.base_time_nanos, diff.time_nanos) == (1, 2)


def test_diff_limit_keeps_the_largest_growth() -> None:
    diff = diff_profiles(_profile(BASE), _profile(LATER), limit=1)
    assert [d.function for d in diff.functions] == ["main.retainSessionBuffers"]


def test_diff_of_a_profile_with_itself_is_empty() -> None:
    profile = _profile(BASE)
    assert diff_profiles(profile, profile).functions == ()


def test_diff_refuses_profiles_of_different_kinds() -> None:
    goroutines = parse_profile(make_goroutine_profile([(["runtime.gopark"], 1)]))
    with pytest.raises(AnalysisError, match="different sample types"):
        diff_profiles(goroutines, _profile(BASE))


def test_summary_serialises_to_plain_json() -> None:
    summary = summarize(
        _profile(LATER),
        goroutine=parse_profile(make_goroutine_profile([(["runtime.gopark"], 12)])),
        base=_profile(BASE),
        limit=2,
    )
    data = json.loads(json.dumps(summary.to_dict()))
    assert data["goroutines"] == 12
    assert data["top"] == {
        "sampleType": "inuse_space",
        "unit": "bytes",
        "total": 5910,
        "functions": [
            {"function": "main.retainSessionBuffers", "flat": 5000, "cum": 5000},
            {"function": "main.cacheUnboundedResponses", "flat": 700, "cum": 700},
        ],
    }
    assert data["diff"]["functions"][0] == {
        "function": "main.retainSessionBuffers",
        "flatDelta": 4000,
        "cumDelta": 4000,
        "baseFlat": 1000,
        "flat": 5000,
    }


def test_summary_without_goroutines_or_base_omits_them() -> None:
    assert set(summarize(_profile(BASE)).to_dict()) == {"top"}
