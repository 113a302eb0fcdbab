"""The webhook's front door: malformed AdmissionReviews are refused with the reason."""

from __future__ import annotations

import json
from typing import Any

import pytest

from memwarden.webhook.server import ReviewError, parse_review

pytestmark = pytest.mark.unit


def review(**request: Any) -> dict[str, Any]:
    base = {
        "uid": "u-1",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": "CREATE",
        "namespace": "shop",
        "userInfo": {"username": "alice"},
        "object": {"metadata": {"generateName": "web-"}, "spec": {"containers": []}},
    }
    base.update(request)
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": base}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param("", "not JSON", id="empty"),
        pytest.param("{not json", "not JSON", id="broken-json"),
        pytest.param("[]", "not an AdmissionReview", id="a-list"),
        pytest.param('{"kind": "AdmissionReview"}', "apiVersion", id="no-api-version"),
        pytest.param(json.dumps({**review(), "kind": "Pod"}), "kind", id="wrong-kind"),
        pytest.param(json.dumps(review(uid="")), "request.uid", id="empty-uid"),
        pytest.param(
            json.dumps(review(operation="EXPLODE")), "request.operation", id="bad-operation"
        ),
        pytest.param(
            json.dumps(review(resource="pods")), "request.resource", id="resource-not-object"
        ),
        pytest.param(json.dumps(review(object=None)), "both missing", id="no-object"),
        pytest.param(
            json.dumps(review(object={"metadata": "x"})), "metadata", id="metadata-not-object"
        ),
        pytest.param(
            json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
            "request",
            id="no-request",
        ),
    ],
)
def test_malformed_reviews_are_refused_with_the_reason(body: str, fragment: str) -> None:
    with pytest.raises(ReviewError, match=fragment):
        parse_review(body)


def test_namespace_of_the_request_is_filled_into_the_object() -> None:
    parsed = parse_review(json.dumps(review()))
    assert parsed["request"]["object"]["metadata"]["namespace"] == "shop"


def test_an_explicit_object_namespace_is_kept() -> None:
    parsed = parse_review(json.dumps(review(object={"metadata": {"namespace": "other"}})))
    assert parsed["request"]["object"]["metadata"]["namespace"] == "other"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\xff\xfe" * 50, id="not-utf8"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deeply-nested"),
    ],
)
def test_undecodable_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(ReviewError, match=r"not JSON|not an AdmissionReview"):
        parse_review(body)
