"""The admission webhook's HTTPS server: memwarden's own, on kopf's event loop.

Not kopf's admission machinery: kopf would hop to a thread for a sync handler, copy the
pod and diff the copy to find the patch, and log each review. Here one coroutine reads
the body, checks the review's shape (a malformed one gets a 400 naming what is wrong,
never a 500), asks the pure core (``admission.admit``) for the decision and answers with
the plan's JSONPatch. Nothing on this path blocks: no file, no API call, no lock.

Failure policy (stated here as in VPA's admission server): memwarden must never block
pod creation. The shipped MutatingWebhookConfiguration says ``failurePolicy: Ignore``
with a short timeout, and the decision never refuses a pod; an exception in it admits
the pod unchanged (outcome ``error``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import aiohttp.web
import orjson

from memwarden.admission import Decision, pod_label, review_response
from memwarden.httpbody import SERVER_OPTIONS, read_limited
from memwarden.observability import health
from memwarden.webhook.tlsreload import CertificateReloader

logger = logging.getLogger(__name__)

#: Refuse absurd bodies before parsing: a pod is well under this; the API server's own
#: request limit is 3 MiB. Read with ``httpbody.read_limited``, and also aiohttp's
#: ``client_max_size`` (its default, 1 MiB, would otherwise win silently).
MAX_REVIEW_BYTES = 8 * 2**20
_API_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
_OPERATIONS = ("CREATE", "UPDATE", "DELETE", "CONNECT")


class ReviewError(ValueError):
    """The body is not an AdmissionReview we can answer; the message says why."""


def _require(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise ReviewError(f"not an AdmissionReview: {where}: {message}")


def parse_review(body: str | bytes) -> dict[str, Any]:
    """Check an AdmissionReview's shape and return it, the object's namespace filled in
    from the request (pods created through a ReplicaSet arrive without one)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ReviewError(f"body is not JSON: {exc}") from exc
    _require(isinstance(data, dict), "body", "not an object")
    _require(data.get("apiVersion") in _API_VERSIONS, "apiVersion", f"one of {_API_VERSIONS}")
    _require(data.get("kind") == "AdmissionReview", "kind", "must be AdmissionReview")
    request = data.get("request")
    _require(isinstance(request, dict), "request", "missing or not an object")
    uid = request.get("uid")
    _require(isinstance(uid, str) and bool(uid), "request.uid", "a non-empty string")
    resource = request.get("resource")
    _require(
        isinstance(resource, dict)
        and all(isinstance(resource.get(k), str) for k in ("group", "version", "resource")),
        "request.resource",
        "an object with group, version and resource",
    )
    _require(request.get("operation") in _OPERATIONS, "request.operation", f"one of {_OPERATIONS}")
    _require(isinstance(request.get("userInfo"), dict), "request.userInfo", "an object")
    namespace = request.get("namespace")
    _require(namespace is None or isinstance(namespace, str), "request.namespace", "a string")
    obj, old = request.get("object"), request.get("oldObject")
    for where, value in (("request.object", obj), ("request.oldObject", old)):
        _require(value is None or isinstance(value, dict), where, "an object")
    if obj is None and old is None:
        raise ReviewError(
            "not an AdmissionReview: request.object and request.oldObject are both missing"
        )
    if obj is not None:
        metadata = obj.setdefault("metadata", {})
        _require(isinstance(metadata, dict), "request.object.metadata", "is not an object")
        if namespace:
            metadata.setdefault("namespace", namespace)
    review: dict[str, Any] = data
    return review


def _object_namespace(review: Mapping[str, Any]) -> str | None:
    request = review["request"]
    namespace = request.get("namespace") or (request.get("object") or {}).get("metadata", {}).get(
        "namespace"
    )
    return str(namespace) if namespace else None


_Handler = Callable[[aiohttp.web.Request], Awaitable[aiohttp.web.StreamResponse]]

Admit = Callable[[Mapping[str, Any], str | None], Decision]
"""The decision for one pod (object, namespace): ``admission.admit`` with its inputs bound."""


class AdmissionTally:
    """Counts admissions between two INFO lines: one line a minute instead of one a pod
    (``handlers/admission.py`` adds the metrics; the admission worker, its reports)."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.infeasible: Counter[str] = Counter()

    def add(self, decision: Decision, seconds: float) -> None:
        infeasible = {}
        if decision.outcome == "infeasible" and decision.policy:
            infeasible[decision.policy] = 1
        self.merge({decision.outcome: 1}, infeasible, [seconds])

    def merge(
        self,
        outcomes: Mapping[str, int],
        infeasible: Mapping[str, int],
        seconds: Iterable[float],
    ) -> None:
        """Count reviews answered here or by the admission worker (its reports)."""
        self.outcomes.update(outcomes)
        self.infeasible.update({p: n for p, n in infeasible.items() if p})

    def flush(self) -> str | None:
        """The summary since the last flush (None when nothing was admitted)."""
        if not self.outcomes:
            return None
        line = ", ".join(f"{n} {outcome}" for outcome, n in sorted(self.outcomes.items()))
        if self.infeasible:
            worst = ", ".join(f"{p} ({n})" for p, n in self.infeasible.most_common(5))
            line += f"; policies not applied (infeasible): {worst}"
        self.outcomes.clear()
        self.infeasible.clear()
        return line


def _is_pod_create(review: Mapping[str, Any]) -> bool:
    request = review["request"]
    resource = request["resource"]
    return bool(
        request["operation"] == "CREATE"
        and resource["resource"] == "pods"
        and resource["group"] == ""
        and not request.get("subResource")
        and request.get("object") is not None
    )


def make_webhook_app(*, path: str, admit: Admit, tally: AdmissionTally) -> aiohttp.web.Application:
    """``POST {path}``: the pod admission review (see module doc)."""

    async def serve(request: aiohttp.web.Request) -> aiohttp.web.Response:
        started = time.perf_counter()
        body = await read_limited(request, MAX_REVIEW_BYTES)
        if body is None:
            logger.warning("refused an admission request over %d bytes", MAX_REVIEW_BYTES)
            message = f"body larger than {MAX_REVIEW_BYTES} bytes"
            return aiohttp.web.json_response({"error": message}, status=413)
        try:
            review = parse_review(body)
        except ReviewError as exc:
            logger.warning("refused a malformed admission request from %s: %s", request.remote, exc)
            return aiohttp.web.json_response({"error": str(exc)}, status=400)
        decision = _decide(review, admit)
        tally.add(decision, time.perf_counter() - started)
        return aiohttp.web.Response(
            body=orjson.dumps(review_response(review, decision, dumps=orjson.dumps)),
            content_type="application/json",
        )

    app = aiohttp.web.Application(client_max_size=MAX_REVIEW_BYTES)
    app.router.add_post(path, serve)
    return app


def _decide(review: Mapping[str, Any], admit: Admit) -> Decision:
    if not _is_pod_create(review):
        return Decision("unchanged", detail="not a pod CREATE")
    pod = review["request"]["object"]
    namespace = _object_namespace(review)
    try:
        decision = admit(pod, namespace)
    except Exception:  # Fail open by design: a memwarden bug must not block pod creation.
        logger.exception(
            "pod %s admitted unchanged: memwarden failed", pod_label(pod, namespace or "")
        )
        return Decision("error", detail="memwarden failed")
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "pod %s %s (policy %s): %s",
            pod_label(pod, namespace or ""),
            decision.outcome,
            decision.policy or "none",
            decision.detail,
        )
    return decision


#: How long a stopping server waits for the reviews in flight: the API server gives up on
#: a review after the webhook's timeoutSeconds (at most 5 s, ``manifests.py``).
SHUTDOWN_SECONDS = 10.0


class WebhookServer:
    """The webhook app on ``host:port``, HTTPS with certificates reloaded in place.

    Stopping drains (``stop(drain_seconds=...)``): for ``drain_seconds`` it keeps answering
    and closes each connection after its answer (``Connection: close``), so the API
    server's keep-alive connections end cleanly, between two reviews, and its next ones
    reach another replica through the Service; then it stops listening and waits for the
    reviews in flight. Without that, a review sent on a keep-alive connection as the
    replica closes it fails, and ``failurePolicy: Ignore`` admits the pod unmutated.
    """

    def __init__(
        self,
        *,
        app: aiohttp.web.Application,
        host: str,
        port: int,
        certificates: CertificateReloader | None,
    ) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._certificates = certificates
        self._runner: aiohttp.web.AppRunner | None = None
        self._reloading: asyncio.Task[None] | None = None
        self.draining = False
        app.middlewares.append(self._close_when_draining)

    @aiohttp.web.middleware
    async def _close_when_draining(
        self, request: aiohttp.web.Request, handler: _Handler
    ) -> aiohttp.web.StreamResponse:
        response = await handler(request)
        if self.draining:
            # Before the response is prepared: aiohttp writes "Connection: close" only
            # then (an on_response_prepare hook is too late: the socket would close after
            # an answer that promised keep-alive, and the API server's next review on it
            # would fail as "server closed idle connection").
            response.force_close()
        return response

    def start_draining(self) -> None:
        """From now on every answer closes its connection (see the class doc)."""
        if not self.draining:
            logger.info("webhook draining: each connection closes after its answer")
        self.draining = True

    async def start(self) -> None:
        context: ssl.SSLContext | None = None
        if self._certificates is not None:
            context = self._certificates.context
        runner = aiohttp.web.AppRunner(
            self._app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=SHUTDOWN_SECONDS,
            **SERVER_OPTIONS,
        )
        await runner.setup()
        site = aiohttp.web.TCPSite(
            runner, self._host, self._port, ssl_context=context, reuse_address=True, backlog=1024
        )
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        health.webhook_listening(True)
        if self._certificates is not None:
            self._reloading = asyncio.create_task(self._certificates.reload_forever())

    async def stop(self, *, drain_seconds: float = 0.0) -> None:
        """Drain for ``drain_seconds`` (0: not at all), stop listening, and return once
        the reviews in flight are answered (at most ``SHUTDOWN_SECONDS``). Not ready
        (``/readyz``) from the start: the Service sends no new connection here."""
        health.start_draining()
        if self._runner is not None and drain_seconds > 0:
            self.start_draining()
            await asyncio.sleep(drain_seconds)
        if self._reloading is not None:
            self._reloading.cancel()
        if self._runner is not None:
            # aiohttp: close the listening socket, then the idle connections, then wait
            # for the handlers still running.
            await self._runner.cleanup()
            self._runner = None
            health.webhook_listening(False, "the webhook stopped")


__all__ = [
    "MAX_REVIEW_BYTES",
    "SHUTDOWN_SECONDS",
    "AdmissionTally",
    "ReviewError",
    "WebhookServer",
    "make_webhook_app",
    "parse_review",
]
