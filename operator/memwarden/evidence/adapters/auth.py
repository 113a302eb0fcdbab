"""Who may read evidence: Kubernetes identities, checked by the API server itself.

The evidence API never decides access on its own. A caller's bearer token goes to a
``TokenReview`` (authentication.k8s.io/v1), and the identity it yields to a
``SubjectAccessReview`` (authorization.k8s.io/v1) for a verb on the subresource
``memoryincidents/evidence`` (group ``memwarden.dev``) in the incident's namespace:

- download an incident's bundle or meta: ``get`` (with the incident's name, so a Role
  may restrict ``resourceNames``);
- list a namespace's bundles: ``list``.

So access to evidence is granted with plain RBAC, separately from access to the
MemoryIncident objects (a core dump holds secrets; reading an incident's status does not).

Tokens are reviewed for the operator's audiences (``memwarden`` by default): a token made
for memwarden (``kubectl create token SA --audience memwarden``) is refused by the API
server, so the operator could not replay it there, and a token made for anything else
(the API server's own included, unless configured) is refused here.

The operator's ServiceAccount needs this RBAC (a ClusterRole) to ask those questions::

    - apiGroups: ["authentication.k8s.io"]
      resources: ["tokenreviews"]
      verbs: ["create"]
    - apiGroups: ["authorization.k8s.io"]
      resources: ["subjectaccessreviews"]
      verbs: ["create"]

Allowed decisions are cached briefly (keyed by a hash of the token, the verb, the
namespace and the name), so a download's retries or a script's loop cost one review;
RBAC refusals are never cached, so a fresh RoleBinding works at once. A revoked grant
stays effective for at most the cache's TTL.

Tokens cost the API server a review each, whoever sends them, so reviews are bounded:
a token the API server did not authenticate is remembered (by its hash) for a few
seconds; each client address may start ``rate`` reviews a second after a burst (429
beyond); at most ``max_concurrent`` run at once, and a request that cannot start one
within ``queue_seconds`` gets 503. Cached answers cost nothing and are never throttled.

An adapter: it returns :class:`Identity` or :class:`Denied` and turns every client failure
into :class:`AuthUnavailable` (raised from the cause). The kubernetes client is
synchronous, so each review runs in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from kubernetes import client

from memwarden.api import GROUP
from memwarden.evidence.ratelimit import RateLimiter
from memwarden.kube import KubeError, call
from memwarden.observability import metrics

__all__ = [
    "EVIDENCE_RESOURCE",
    "EVIDENCE_SUBRESOURCE",
    "AuthUnavailable",
    "Authorizer",
    "Denied",
    "Identity",
    "KubeAuthorizer",
    "Verb",
]

log = logging.getLogger(__name__)

EVIDENCE_RESOURCE = "memoryincidents"
EVIDENCE_SUBRESOURCE = "evidence"

Verb = Literal["get", "list"]


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller the API server allowed to do what was asked."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True, slots=True)
class Denied:
    """Not allowed: 401 when the token did not authenticate, 403 when RBAC said no; 429
    when the client started too many reviews, 503 when too many are in flight (both with
    ``retry_after`` seconds)."""

    status: Literal[401, 403, 429, 503]
    reason: str
    retry_after: int | None = None


_UNAUTHENTICATED = Denied(401, "the bearer token did not authenticate")


class AuthUnavailable(Exception):
    """The API server could not be asked (network, timeout, or an error answer)."""


class Authorizer(Protocol):
    """What the evidence API needs to decide a read."""

    async def authorize(
        self, *, token: str, verb: Verb, namespace: str, name: str | None = None, client: str = ""
    ) -> Identity | Denied: ...


class KubeAuthorizer:
    """TokenReview + SubjectAccessReview through the operator's own kubernetes client."""

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        cache_ttl: float = 10.0,
        cache_size: int = 4096,
        negative_ttl: float = 5.0,
        rate: float = 2.0,
        burst: int = 20,
        max_concurrent: int = 4,
        queue_seconds: float = 2.0,
        audiences: Sequence[str] = (),
        request_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``audiences``: what a token must be for (the operator's: ``memwarden``); empty
        means the API server's own (a kubeconfig token as it is). ``clock`` is monotonic
        seconds, injectable for tests of the cache.

        The defaults: ``negative_ttl`` 5 s (a rejected token stays rejected; a mistyped
        one is retried soon), ``rate`` 2/s after a ``burst`` of 20 per client (a person
        or a script downloading bundles needs a review per token, then the cache serves),
        ``max_concurrent`` 4 (the operator's worker threads are shared with the risk loop
        and uploads: reviews never take more than these), ``queue_seconds`` 2 (a waiting
        reader is answered well inside any client's timeout)."""
        self._authn = client.AuthenticationV1Api(api_client)
        self._authz = client.AuthorizationV1Api(api_client)
        self._ttl = cache_ttl
        self._size = cache_size
        self._negative_ttl = negative_ttl
        self._limiter = RateLimiter(rate=rate, burst=burst)
        self._reviews = asyncio.Semaphore(max_concurrent)
        self._queue_seconds = queue_seconds
        self._audiences = list(audiences)
        self._timeout = request_timeout
        self._clock = clock
        self._cache: dict[tuple[str, str, str, str], tuple[float, Identity | Denied]] = {}

    async def authorize(
        self, *, token: str, verb: Verb, namespace: str, name: str | None = None, client: str = ""
    ) -> Identity | Denied:
        """``client`` (the caller's address) is what the rate limit counts against."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        key = (digest, verb, namespace, name or "")
        unauthenticated = (digest, "", "", "")
        now = self._clock()
        for entry in (key, unauthenticated):
            cached = self._cache.get(entry)
            if cached is not None and cached[0] > now:
                return cached[1]
            self._cache.pop(entry, None)
        wait = self._limiter.take(client, now=now)
        if wait > 0:
            metrics.EVIDENCE_AUTH_THROTTLED.labels(reason="rate").inc()
            return Denied(429, f"too many reviews for {client or 'this client'}", math.ceil(wait))
        try:
            await asyncio.wait_for(self._reviews.acquire(), self._queue_seconds)
        except TimeoutError:
            metrics.EVIDENCE_AUTH_THROTTLED.labels(reason="busy").inc()
            return Denied(503, "too many reviews in flight", math.ceil(self._queue_seconds))
        try:
            decision = await asyncio.to_thread(
                self._review, token=token, verb=verb, namespace=namespace, name=name
            )
        finally:
            self._reviews.release()
        if isinstance(decision, Identity) and self._ttl > 0:
            self._remember(key, decision, until=now + self._ttl)
        elif decision is _UNAUTHENTICATED and self._negative_ttl > 0:
            self._remember(unauthenticated, decision, until=now + self._negative_ttl)
        return decision

    def _remember(
        self, key: tuple[str, str, str, str], decision: Identity | Denied, *, until: float
    ) -> None:
        now = self._clock()
        if len(self._cache) >= self._size:
            for stale in [k for k, (expiry, _) in self._cache.items() if expiry <= now]:
                del self._cache[stale]
        while len(self._cache) >= self._size:
            del self._cache[next(iter(self._cache))]  # the oldest insertion
        self._cache[key] = (until, decision)

    def _review(
        self, *, token: str, verb: Verb, namespace: str, name: str | None
    ) -> Identity | Denied:
        """Blocking: both reviews. Runs in a worker thread."""
        identity = self._authenticate(token)
        if isinstance(identity, Denied):
            return identity
        attributes = client.V1ResourceAttributes(
            group=GROUP,
            resource=EVIDENCE_RESOURCE,
            subresource=EVIDENCE_SUBRESOURCE,
            verb=verb,
            namespace=namespace,
            name=name,
        )
        review = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=identity.username,
                uid=identity.uid or None,
                groups=list(identity.groups),
                extra={k: list(v) for k, v in identity.extra} or None,
                resource_attributes=attributes,
            )
        )
        result = self._call("SubjectAccessReview", self._authz.create_subject_access_review, review)
        status = result.status
        if status is None or not status.allowed:
            target = f"{EVIDENCE_RESOURCE}/{EVIDENCE_SUBRESOURCE}"
            where = f"{namespace}/{name}" if name else namespace
            message = f"{identity.username} may not {verb} {target} in {where}"
            if status is not None and status.evaluation_error:
                log.warning("SubjectAccessReview evaluation error: %.200s", status.evaluation_error)
            return Denied(403, message)
        return identity

    def _authenticate(self, token: str) -> Identity | Denied:
        review = client.V1TokenReview(
            spec=client.V1TokenReviewSpec(token=token, audiences=self._audiences or None)
        )
        try:
            result = self._call("TokenReview", self._authn.create_token_review, review)
        except AuthUnavailable:
            metrics.EVIDENCE_TOKEN_REVIEWS.labels(result="error").inc()
            raise
        status = result.status
        if status is None or not status.authenticated or status.user is None:
            metrics.EVIDENCE_TOKEN_REVIEWS.labels(result="unauthenticated").inc()
            if status is not None and status.error:
                log.info("TokenReview refused a token: %.200s", status.error)
            return _UNAUTHENTICATED
        if self._audiences and not set(status.audiences or ()) & set(self._audiences):
            # The API's contract: a client must check the audiences it was answered with.
            metrics.EVIDENCE_TOKEN_REVIEWS.labels(result="unauthenticated").inc()
            log.info("TokenReview: the token is not for %s", ", ".join(self._audiences))
            return _UNAUTHENTICATED
        metrics.EVIDENCE_TOKEN_REVIEWS.labels(result="authenticated").inc()
        user = status.user
        return Identity(
            username=user.username or "",
            uid=user.uid or "",
            groups=tuple(user.groups or ()),
            extra=tuple(sorted((k, tuple(v or ())) for k, v in (user.extra or {}).items())),
        )

    def _call(self, what: str, method: Callable[..., Any], body: Any) -> Any:
        try:
            return call(what, method, body, timeout=self._timeout)
        except KubeError as exc:
            raise AuthUnavailable(f"failed: {exc}") from exc
