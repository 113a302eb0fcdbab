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

The operator's ServiceAccount needs this RBAC (a ClusterRole) to ask those questions::

    - apiGroups: ["authentication.k8s.io"]
      resources: ["tokenreviews"]
      verbs: ["create"]
    - apiGroups: ["authorization.k8s.io"]
      resources: ["subjectaccessreviews"]
      verbs: ["create"]

Allowed decisions are cached briefly (keyed by a hash of the token, the verb, the
namespace and the name), so a download's retries or a script's loop cost one review;
refusals are never cached, so a fresh RoleBinding works at once. A revoked grant
stays effective for at most the cache's TTL.

An adapter: it returns :class:`Identity` or :class:`Denied` and turns every client failure
into :class:`AuthUnavailable` (raised from the cause). The kubernetes client is
synchronous, so each review runs in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from memwarden.api import GROUP

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
    """Not allowed: 401 when the token did not authenticate, 403 when RBAC said no."""

    status: Literal[401, 403]
    reason: str


class AuthUnavailable(Exception):
    """The API server could not be asked (network, timeout, or an error answer)."""


class Authorizer(Protocol):
    """What the evidence API needs to decide a read."""

    async def authorize(
        self, *, token: str, verb: Verb, namespace: str, name: str | None = None
    ) -> Identity | Denied: ...


class KubeAuthorizer:
    """TokenReview + SubjectAccessReview through the operator's own kubernetes client."""

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        cache_ttl: float = 10.0,
        cache_size: int = 4096,
        audiences: Sequence[str] = (),
        request_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``audiences`` empty means the API server's own (a user's kubeconfig token);
        ``clock`` is monotonic seconds, injectable for tests of the cache."""
        self._authn = client.AuthenticationV1Api(api_client)
        self._authz = client.AuthorizationV1Api(api_client)
        self._ttl = cache_ttl
        self._size = cache_size
        self._audiences = list(audiences)
        self._timeout = request_timeout
        self._clock = clock
        self._cache: dict[tuple[str, str, str, str], tuple[float, Identity]] = {}

    async def authorize(
        self, *, token: str, verb: Verb, namespace: str, name: str | None = None
    ) -> Identity | Denied:
        key = (hashlib.sha256(token.encode()).hexdigest(), verb, namespace, name or "")
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        self._cache.pop(key, None)
        decision = await asyncio.to_thread(
            self._review, token=token, verb=verb, namespace=namespace, name=name
        )
        if isinstance(decision, Identity) and self._ttl > 0:
            self._remember(key, decision, now=now)
        return decision

    def _remember(self, key: tuple[str, str, str, str], identity: Identity, *, now: float) -> None:
        if len(self._cache) >= self._size:
            for stale in [k for k, (until, _) in self._cache.items() if until <= now]:
                del self._cache[stale]
        while len(self._cache) >= self._size:
            del self._cache[next(iter(self._cache))]  # the oldest insertion
        self._cache[key] = (now + self._ttl, identity)

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
        result = self._call("TokenReview", self._authn.create_token_review, review)
        status = result.status
        if status is None or not status.authenticated or status.user is None:
            if status is not None and status.error:
                log.info("TokenReview refused a token: %.200s", status.error)
            return Denied(401, "the bearer token did not authenticate")
        user = status.user
        return Identity(
            username=user.username or "",
            uid=user.uid or "",
            groups=tuple(user.groups or ()),
            extra=tuple(sorted((k, tuple(v or ())) for k, v in (user.extra or {}).items())),
        )

    def _call(self, what: str, method: Callable[..., Any], body: Any) -> Any:
        try:
            return method(body, _request_timeout=self._timeout)
        except ApiException as exc:
            raise AuthUnavailable(f"{what} failed: HTTP {exc.status} {exc.reason}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise AuthUnavailable(f"{what} failed: {exc}") from exc
