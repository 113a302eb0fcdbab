"""Which policy governs a pod: selectors, container lists and precedence."""

from __future__ import annotations

import pytest

from memwarden.api import LabelSelector
from memwarden.selection import PolicyIndex, select_policy, selector_matches
from memwarden_testing.builders import make_candidate

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        pytest.param({}, {"app": "x"}, True, id="empty-selects-all"),
        pytest.param(
            {"matchLabels": {"app": "x"}}, {"app": "x", "t": "1"}, True, id="labels-subset"
        ),
        pytest.param({"matchLabels": {"app": "x"}}, {"app": "y"}, False, id="labels-differ"),
        pytest.param({"matchLabels": {"app": "x"}}, {}, False, id="labels-missing"),
        pytest.param(
            {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]},
            {"tier": "b"},
            True,
            id="in",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]},
            {},
            False,
            id="in-absent",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]},
            {},
            True,
            id="notin-absent",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]},
            {"tier": "a"},
            False,
            id="notin-present",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "go", "operator": "Exists"}]},
            {"go": ""},
            True,
            id="exists",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "go", "operator": "DoesNotExist"}]},
            {"go": "1"},
            False,
            id="does-not-exist",
        ),
        pytest.param(
            {
                "matchLabels": {"app": "x"},
                "matchExpressions": [{"key": "go", "operator": "Exists"}],
            },
            {"app": "x"},
            False,
            id="labels-and-expressions-all-must-hold",
        ),
    ],
)
def test_selector_matches(selector: dict, labels: dict, expected: bool) -> None:
    assert selector_matches(LabelSelector.model_validate(selector), labels) is expected


@pytest.mark.parametrize(
    ("policies", "winner", "reason"),
    [
        pytest.param(
            [make_candidate("low", priority=1), make_candidate("high", priority=5)],
            "high",
            "highest priority (5 > 1)",
            id="priority-wins",
        ),
        pytest.param(
            [
                make_candidate("young", created="2026-11-25T12:00:00Z"),
                make_candidate("old", created="2026-11-01T00:00:00Z"),
            ],
            "old",
            "oldest policy",
            id="tie-oldest-wins",
        ),
        pytest.param(
            [make_candidate("zeta"), make_candidate("alpha")],
            "alpha",
            "sorts first by name",
            id="tie-name-wins",
        ),
        pytest.param(
            [make_candidate("only")],
            "only",
            "only matching policy",
            id="single",
        ),
    ],
)
def test_precedence_is_deterministic_and_explained(
    policies: list, winner: str, reason: str
) -> None:
    for order in (policies, list(reversed(policies))):
        selection = select_policy(
            labels={"app": "checkout"}, container_names=["app"], candidates=order
        )
        assert selection.winner is not None
        assert selection.winner.name == winner
        assert reason in selection.reason
        assert len(selection.others) == len(policies) - 1


def test_policy_naming_absent_containers_does_not_govern() -> None:
    sidecar_only = make_candidate("sidecar", containers=["envoy"], priority=10)
    general = make_candidate("general")
    selection = select_policy(
        labels={"app": "checkout"},
        container_names=["app", "log"],
        candidates=[sidecar_only, general],
    )
    assert selection.winner is not None and selection.winner.name == "general"
    assert selection.governed == ("app", "log")


def test_container_list_limits_the_governed_containers_in_pod_order() -> None:
    policy = make_candidate(containers=["log", "app"])
    selection = select_policy(
        labels={"app": "checkout"}, container_names=["app", "proxy", "log"], candidates=[policy]
    )
    assert selection.governed == ("app", "log")


def test_no_policy_selects() -> None:
    selection = select_policy(
        labels={"app": "other"}, container_names=["app"], candidates=[make_candidate()]
    )
    assert selection.winner is None
    assert selection.reason == "no policy selects this pod"


def test_index_keeps_namespaces_apart_and_replaces_on_update() -> None:
    index = PolicyIndex()
    shop_b = make_candidate("b", namespace="shop", priority=2)
    index.swap_namespace("shop", [make_candidate("a", namespace="shop", priority=1), shop_b])
    index.swap_namespace("bank", [make_candidate("a", namespace="bank", priority=9)])
    assert len(index) == 3
    chosen = index.select(namespace="shop", labels={"app": "checkout"}, container_names=["app"])
    assert chosen.winner is not None and chosen.winner.name == "b"

    index.swap_namespace("shop", [make_candidate("a", namespace="shop", priority=3), shop_b])
    assert len(index) == 3
    chosen = index.select(namespace="shop", labels={"app": "checkout"}, container_names=["app"])
    assert chosen.winner is not None and chosen.winner.name == "a"

    index.remove(namespace="shop", name="a")
    index.remove(namespace="shop", name="b")
    assert (
        index.select(namespace="shop", labels={"app": "checkout"}, container_names=["app"]).winner
        is None
    )
    assert len(index) == 1
