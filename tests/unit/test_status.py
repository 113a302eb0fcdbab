"""Policy status from one pass over a namespace's pods, and the book of what is due."""

from __future__ import annotations

import copy
import json

import pytest

from memwarden.api import APPLIED_ANNOTATION
from memwarden.selection import PolicyIndex
from memwarden.sizing import KubeletProfile
from memwarden.status import StatusBook, namespace_statuses, policy_status
from memwarden_testing.builders import make_candidate, make_container, make_pod

pytestmark = pytest.mark.unit

PROFILE = KubeletProfile.defaults_for(37)
PLAIN = {"request": "512Mi", "limit": "1Gi"}
NOW = "2026-11-30T12:00:00Z"


def compliant_pod(name: str, policy: str = "shop/checkout") -> dict[str, object]:
    record = {
        "policy": policy,
        "containers": {"app": {"request": "512Mi", "limit": "1Gi"}},
    }
    return make_pod(
        name,
        labels={"app": "checkout"},
        containers=[make_container(memory_request="512Mi", memory_limit="1Gi")],
        annotations={APPLIED_ANNOTATION: json.dumps(record, sort_keys=True, separators=(",", ":"))},
    )


def test_counts_of_every_policy_of_a_namespace_in_one_pass() -> None:
    checkout = make_candidate("checkout", memory=PLAIN)
    batch = make_candidate("batch", memory=PLAIN, match_labels={"app": "batch"})
    pods = [
        compliant_pod("c1"),
        make_pod("c2", labels={"app": "checkout"}),  # unmutated: drifted
        make_pod("b1", labels={"app": "batch"}),
        make_pod("x1", labels={"app": "unrelated"}),
    ]
    statuses = namespace_statuses(
        policies=[checkout, batch],
        pods=pods,
        profile=PROFILE,
        now=NOW,
        generations={"checkout": 3, "batch": 1},
        previous={},
    )
    assert (statuses["checkout"].matchedPods, statuses["checkout"].compliantPods) == (2, 1)
    assert statuses["checkout"].driftedPodNames == ["c2"]
    assert statuses["checkout"].observedGeneration == 3
    assert (statuses["batch"].matchedPods, statuses["batch"].driftedPods) == (1, 1)


def test_a_conflict_is_listed_on_every_policy_involved() -> None:
    low = make_candidate("low", memory=PLAIN, priority=1)
    high = make_candidate("high", memory=PLAIN, priority=5)
    statuses = namespace_statuses(
        policies=[low, high],
        pods=[make_pod("p", labels={"app": "checkout"})],
        profile=PROFILE,
        now=NOW,
        generations={},
        previous={},
    )
    assert statuses["high"].matchedPods == 1 and statuses["low"].matchedPods == 0
    assert [c.pod for c in statuses["low"].conflicts] == ["p"]
    assert statuses["low"].conflicts == statuses["high"].conflicts


def test_an_unchanged_namespace_gives_an_equal_status_so_nothing_is_written() -> None:
    checkout = make_candidate("checkout", memory=PLAIN)
    pods = [compliant_pod("c1")]
    first = policy_status(
        policy=checkout, generation=1, pods=pods, candidates=[checkout], profile=PROFILE, now=NOW
    )
    later = policy_status(
        policy=checkout,
        generation=1,
        pods=copy.deepcopy(pods),
        candidates=[checkout],
        profile=PROFILE,
        now="2026-11-30T13:00:00Z",
        previous=first,
    )
    assert later == first  # conditions keep their transition time


def test_the_book_hands_out_each_touched_namespace_once() -> None:
    book = StatusBook()
    book.touch("shop")
    book.touch("bank")
    book.touch("shop")
    assert book.take() == ["bank", "shop"]
    assert book.take() == []
    book.touch_all(["a", "b"])
    assert book.take() == ["a", "b"]


def test_the_book_remembers_and_forgets_current_statuses() -> None:
    book = StatusBook()
    book.observe(
        {
            "metadata": {
                "namespace": "shop",
                "name": "checkout",
                "generation": 2,
                "resourceVersion": "17",
            },
            "status": {"matchedPods": 1},
        }
    )
    seen = book.current[("shop", "checkout")]
    assert (seen.generation, seen.resource_version, seen.status) == (2, "17", {"matchedPods": 1})
    book.forget(namespace="shop", name="checkout")
    assert ("shop", "checkout") not in book.current


def _policy(version: str, *, uid: str = "u1", ready: int = 0) -> dict[str, object]:
    return {
        "metadata": {
            "namespace": "shop",
            "name": "checkout",
            "uid": uid,
            "resourceVersion": version,
        },
        "status": {"matchedPods": ready},
    }


@pytest.mark.parametrize(
    ("first", "then", "kept"),
    [
        pytest.param(_policy("20"), _policy("18"), "20", id="a-late-write-answer-is-older"),
        pytest.param(_policy("18"), _policy("20"), "20", id="a-newer-event-replaces"),
        pytest.param(_policy("9"), _policy("10"), "10", id="compared-as-integers-not-text"),
        pytest.param(_policy("20"), _policy("5", uid="u2"), "5", id="a-recreated-policy-replaces"),
        pytest.param(_policy("20"), _policy("opaque"), "opaque", id="not-comparable-replaces"),
    ],
)
def test_the_book_never_goes_back_to_an_older_version(
    first: dict[str, object], then: dict[str, object], kept: str
) -> None:
    """A write's answer that arrives after the watch's newer event must not win: every
    conditional write after it would conflict."""
    book = StatusBook()
    book.observe(first)
    book.observe(then)
    assert book.current[("shop", "checkout")].resource_version == kept


def test_index_swaps_a_whole_namespace_at_once() -> None:
    index = PolicyIndex()
    index.replace_all([make_candidate("a"), make_candidate("b", namespace="bank")])
    before = index.candidates_for(namespace="shop", labels={"app": "checkout"})
    index.swap_namespace("shop", [make_candidate("c"), make_candidate("d")])
    # A reader that took the old table still holds it whole; new readers see the new one.
    assert [c.name for c in before] == ["a"]
    after = index.candidates_for(namespace="shop", labels={"app": "checkout"})
    assert sorted(c.name for c in after) == ["c", "d"]
    assert index.namespaces() == ["bank", "shop"]
    index.swap_namespace("shop", [])
    assert index.namespaces() == ["bank"]
    assert len(index) == 1
