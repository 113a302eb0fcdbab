"""The pod index our own watch keeps: views by namespace, the status book told of changes."""

from __future__ import annotations

import pytest

from memwarden.podwatch import PodIndex
from memwarden.status import StatusBook, pod_view
from memwarden_testing.builders import make_pod

pytestmark = pytest.mark.unit


def view(name: str, namespace: str = "shop", app: str = "checkout") -> dict[str, object]:
    found = pod_view(make_pod(name, namespace=namespace, labels={"app": app}))
    assert found is not None
    return found


def index() -> tuple[PodIndex, StatusBook]:
    book = StatusBook()
    return PodIndex(book=book, governed=lambda ns: ns != "kube-system"), book


def test_events_keep_views_by_namespace_and_make_namespaces_due() -> None:
    pods, book = index()
    pods.apply("shop", "a", view("a"))
    pods.apply("shop", "b", view("b"))
    pods.apply("bank", "c", view("c", namespace="bank"))
    pods.apply("kube-system", "dns", view("dns", namespace="kube-system"))
    assert sorted(pods) == ["bank", "shop"]
    assert sorted(p["metadata"]["name"] for p in pods.get("shop", [])) == ["a", "b"]
    assert pods.get("elsewhere", []) == []
    assert book.take() == ["bank", "shop"]
    pods.apply("shop", "a", view("a"))  # the same view again: nothing due
    assert book.take() == []
    pods.apply("bank", "c", None)
    assert list(pods) == ["shop"] and len(pods) == 2
    assert book.take() == ["bank"]


def test_a_new_list_replaces_everything_and_marks_the_index_listed() -> None:
    pods, book = index()
    pods.apply("shop", "old", view("old"))
    book.take()
    assert not pods.listed.is_set()
    pods.replace_all({"shop": {"new": view("new")}, "bank": {"c": view("c", namespace="bank")}})
    assert [p["metadata"]["name"] for p in pods.get("shop")] == ["new"]
    assert pods.listed.is_set() and book.ready
    assert book.take() == ["bank", "shop"]


def test_one_namespaces_list_keeps_the_other_namespaces_pods() -> None:
    """With a watcher per watched namespace (``--namespace``, repeated), each lists its
    own: the second list must not drop the first one's pods."""
    pods, _ = index()
    pods.replace_all({"shop": {"a": view("a"), "gone": view("gone")}}, namespace="shop")
    pods.replace_all({"bank": {"c": view("c", namespace="bank")}}, namespace="bank")
    pods.replace_all({"shop": {"a": view("a")}}, namespace="shop")  # relisted after a 410
    assert {ns: sorted(p["metadata"]["name"] for p in pods.get(ns)) for ns in pods} == {
        "shop": ["a"],
        "bank": ["c"],
    }


def test_a_pod_makes_its_namespace_due_only_when_its_view_changes() -> None:
    pods, book = index()
    pods.apply("shop", "p", view("p"))
    assert book.take() == ["shop"]
    # The scheduler's or kubelet's status updates do not change the view: nothing is due.
    pods.apply("shop", "p", view("p"))
    assert book.take() == []
    pods.apply("shop", "p", view("p", app="other"))
    assert book.take() == ["shop"]
    assert pods.get("shop")[0]["metadata"]["labels"] == {"app": "other"}
    pods.apply("shop", "p", None)
    assert book.take() == ["shop"]
    pods.apply("shop", "p", None)  # gone twice: once is enough
    assert book.take() == []


def test_the_index_is_listed_only_once_every_watched_namespace_is() -> None:
    pods, book = index()
    pods.expected_scopes = {"shop", "bank"}
    pods.apply("bank", "c", view("c", namespace="bank"))
    pods.replace_all({"shop": {"a": view("a")}}, namespace="shop")
    assert not pods.listed.is_set() and not book.ready
    # The shop list leaves the bank pods alone: they are another watcher's.
    assert [p["metadata"]["name"] for p in pods.get("bank")] == ["c"]
    pods.replace_all({"bank": {"c": view("c", namespace="bank")}}, namespace="bank")
    assert pods.listed.is_set() and book.ready


def test_never_governed_namespaces_and_terminating_pods_stay_out_of_the_index() -> None:
    """What the status and update loops can ever see, resize or evict is in the index: a
    never-governed namespace's pods and a terminating pod are not."""
    pods, book = index()
    pods.apply("kube-system", "dns", view("dns", namespace="kube-system"))
    assert list(pods) == [] and book.take() == []
    terminating = make_pod("p", labels={"app": "checkout"})
    terminating["metadata"]["deletionTimestamp"] = "2026-11-30T12:00:00Z"
    assert pod_view(terminating) is None
    pods.apply("shop", "p", view("p"))
    pods.apply("shop", "p", pod_view(terminating))
    assert pods.get("shop") == []
