"""The admission webhook's HTTPS server: kopf's, with a strict front door.

kopf's server passes any JSON to its engine, so a malformed AdmissionReview (a list,
a request without ``uid``...) ends as a 500. Here the review's shape is checked first
and refused with a 400 naming what is wrong; only well-formed reviews reach kopf. The
namespace of the request is copied into the object when the API server left it out (pods
created through a ReplicaSet arrive that way), so handlers always know it.

Failure policy (stated here as in VPA's admission server): memwarden must never block
pod creation. The shipped MutatingWebhookConfiguration says ``failurePolicy: Ignore``
with a short timeout, and the pod handler itself never refuses a pod.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

import aiohttp.web
import kopf
from kopf._core.engines import admission as kopf_admission  # the errors kopf's own server maps
from pydantic import BaseModel, ConfigDict, Field, ValidationError

logger = logging.getLogger(__name__)

#: Refuse absurd bodies before parsing: a pod is well under this; the API server's own
#: request limit is 3 MiB.
MAX_REVIEW_BYTES = 8 * 2**20


class _GroupVersionResource(BaseModel):
    model_config = ConfigDict(extra="allow")
    group: str
    version: str
    resource: str


class _ReviewRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    uid: str = Field(min_length=1)
    resource: _GroupVersionResource
    operation: Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]
    userInfo: dict[str, Any]
    namespace: str | None = None
    object: dict[str, Any] | None = None
    oldObject: dict[str, Any] | None = None


class _Review(BaseModel):
    model_config = ConfigDict(extra="allow")
    apiVersion: Literal["admission.k8s.io/v1", "admission.k8s.io/v1beta1"]
    kind: Literal["AdmissionReview"]
    request: _ReviewRequest


class ReviewError(ValueError):
    """The body is not an AdmissionReview we can answer; the message says why."""


def parse_review(text: str | bytes) -> dict[str, Any]:
    """Check an AdmissionReview's shape and return it as a dict for kopf, namespace filled in."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReviewError(f"body is not JSON: {exc.msg} at {exc.pos}") from exc
    except (UnicodeDecodeError, RecursionError) as exc:  # bytes that are not UTF-8; deep nesting
        raise ReviewError(f"body is not JSON: {type(exc).__name__}") from exc
    try:
        review = _Review.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise ReviewError(f"not an AdmissionReview: {where}: {first['msg']}") from exc
    request = review.request
    if request.object is None and request.oldObject is None:
        raise ReviewError(
            "not an AdmissionReview: request.object and request.oldObject are both missing"
        )
    result: dict[str, Any] = data
    obj = result["request"].get("object")
    if obj is not None and request.namespace:
        metadata = obj.setdefault("metadata", {})
        if not isinstance(metadata, dict):
            raise ReviewError("not an AdmissionReview: request.object.metadata is not an object")
        metadata.setdefault("namespace", request.namespace)
    return result


class StrictWebhookServer(kopf.WebhookServer):
    """kopf's WebhookServer that answers malformed reviews with 400 instead of 500."""

    @staticmethod
    async def _serve(
        fn: Any,
        request: aiohttp.web.Request,
    ) -> aiohttp.web.Response:
        if request.content_length is not None and request.content_length > MAX_REVIEW_BYTES:
            raise aiohttp.web.HTTPRequestEntityTooLarge(
                max_size=MAX_REVIEW_BYTES, actual_size=request.content_length
            )
        body = await request.read()
        try:
            review = parse_review(body)
        except ReviewError as exc:
            logger.warning("refused a malformed admission request from %s: %s", request.remote, exc)
            return aiohttp.web.json_response({"error": str(exc)}, status=400)
        headers = dict(request.headers)
        sslpeer = request.transport.get_extra_info("peercert") if request.transport else None
        webhook = request.match_info.get("id")
        try:
            response = await fn(review, webhook=webhook, sslpeer=sslpeer, headers=headers)
        except kopf_admission.UnknownResourceError as exc:
            return aiohttp.web.json_response({"error": str(exc)}, status=404)
        except kopf_admission.WebhookError as exc:
            return aiohttp.web.json_response({"error": str(exc)}, status=400)
        return aiohttp.web.json_response(response)
