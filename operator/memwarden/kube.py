"""The Kubernetes adapter: the official client behind a few calls, our own errors out.

Handlers that need more than kopf's ``patch`` (creating an object, writing another
object's status) go through here. ``ApiException`` and connection errors become
``NotFound`` / ``Conflict`` / ``Transient`` / ``Rejected``, raised ``from`` the cause with
the payload cut short. The client is synchronous: async code uses the ``a*`` methods,
which run it in a worker thread.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.metadata
import json
import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from memwarden.api import GROUP, VERSION

#: Error payloads are cut to this length in messages (and so in logs and Events).
MAX_MESSAGE = 300
#: Per request: a slow API server must not hold a handler (or a worker thread) for long.
REQUEST_TIMEOUT = 10.0

#: Who Events say they are from (``kubectl describe``: the From column), whether kopf or
#: the adapter posts them; the instance is the pod (its hostname).
EVENT_COMPONENT = "memwarden"
EVENT_INSTANCE = socket.gethostname()

#: The field manager of every write the operator makes (``metadata.managedFields``). The
#: API server names a write's manager after the User-Agent's first word when no
#: ``fieldManager`` is given, so both clients, this adapter's and kopf's
#: (``handlers/startup.py``'s login), send this agent: ``memwarden``, not ``kopf`` or
#: ``OpenAPI-Generator``.
FIELD_MANAGER = "memwarden"


def user_agent() -> str:
    """``memwarden/VERSION``: the API server takes ``memwarden`` as the field manager."""
    try:
        version = importlib.metadata.version("memwarden")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"{FIELD_MANAGER}/{version}"


_log = logging.getLogger(__name__)


class KubeError(Exception):
    """Base of the adapter's errors; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class NotFound(KubeError):
    """404: the object (or its namespace, or its kind) does not exist."""


class Conflict(KubeError):
    """409: already exists, or a stale resourceVersion."""


class Transient(KubeError):
    """No answer, 429 or 5xx: try again later."""


class Rejected(KubeError):
    """Any other 4xx (invalid, forbidden): trying again will not help."""


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def error_from(exc: ApiException, *, what: str) -> KubeError:
    """Our error for an ``ApiException`` (the caller raises it ``from`` ``exc``)."""
    status = int(exc.status or 0)
    detail = exc.reason or ""
    if exc.body:
        try:
            detail = json.loads(exc.body).get("message") or detail
        except (ValueError, AttributeError):
            detail = str(exc.body)
    message = _short(f"{what}: {status} {detail}")
    if status == 404:
        return NotFound(message, status=status)
    if status == 409:
        return Conflict(message, status=status)
    if status == 0 or status == 429 or status >= 500:
        return Transient(message, status=status)
    return Rejected(message, status=status)


@dataclass(frozen=True)
class CustomResource:
    """Group, version and plural of a custom resource kind."""

    group: str
    version: str
    plural: str


POLICIES = CustomResource(group=GROUP, version=VERSION, plural="memorypolicies")
INCIDENTS = CustomResource(group=GROUP, version=VERSION, plural="memoryincidents")


def api_client_from_environment() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else ``$KUBECONFIG`` / ~/.kube."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except ConfigException:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    api = client.ApiClient(configuration)
    api.user_agent = user_agent()  # its writes are managed by FIELD_MANAGER
    return api


def call(what: str, fn: Any, *args: Any, timeout: float = REQUEST_TIMEOUT, **kwargs: Any) -> Any:
    """One Kubernetes client call, its failures as ``KubeError`` (``what`` says which)."""
    try:
        return fn(*args, _request_timeout=timeout, **kwargs)
    except ApiException as exc:
        raise error_from(exc, what=what) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise Transient(_short(f"{what}: {exc}")) from exc


class Kube:
    """A few generic calls on custom resources (more can be added in the same shape)."""

    def __init__(self, api_client: client.ApiClient) -> None:
        api_client.user_agent = user_agent()  # its writes are managed by FIELD_MANAGER
        self.api_client = api_client
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._policy = client.PolicyV1Api(api_client)
        self._coordination = client.CoordinationV1Api(api_client)

    @classmethod
    def from_environment(cls) -> Kube:
        return cls(api_client_from_environment())

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return dict(call(what, fn, *args, **kwargs))

    def create(
        self, resource: CustomResource, *, namespace: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Create a namespaced custom object; ``Conflict`` when the name is taken."""
        name = (body.get("metadata") or {}).get("name", "?")
        return self._call(
            f"create {resource.plural} {namespace}/{name}",
            self._custom.create_namespaced_custom_object,
            resource.group,
            resource.version,
            namespace,
            resource.plural,
            dict(body),
        )

    def patch_status(
        self,
        resource: CustomResource,
        *,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Merge-patch the status subresource. Put ``metadata.resourceVersion`` in
        ``patch`` to make it conditional (``Conflict`` if the object changed since)."""
        return self._call(
            f"patch {resource.plural}/status {namespace}/{name}",
            self._custom.patch_namespaced_custom_object_status,
            resource.group,
            resource.version,
            namespace,
            resource.plural,
            name,
            dict(patch),
        )

    def list_objects(
        self, resource: CustomResource, *, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        """Every object of the kind, in one namespace or the whole cluster."""
        if namespace is None:
            result = self._call(
                f"list {resource.plural}",
                self._custom.list_cluster_custom_object,
                resource.group,
                resource.version,
                resource.plural,
            )
        else:
            result = self._call(
                f"list {resource.plural} in {namespace}",
                self._custom.list_namespaced_custom_object,
                resource.group,
                resource.version,
                namespace,
                resource.plural,
            )
        return [dict(item) for item in result.get("items") or []]

    def get(self, resource: CustomResource, *, namespace: str, name: str) -> dict[str, Any]:
        """One namespaced custom object; ``NotFound`` when absent."""
        return self._call(
            f"get {resource.plural} {namespace}/{name}",
            self._custom.get_namespaced_custom_object,
            resource.group,
            resource.version,
            namespace,
            resource.plural,
            name,
        )

    def read_pod(self, *, namespace: str, name: str) -> dict[str, Any]:
        """A pod as a plain dict (camelCase, as the API serves it)."""
        try:
            result = self._core.read_namespaced_pod(
                name, namespace, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            raise error_from(exc, what=f"get pod {namespace}/{name}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Transient(_short(f"get pod {namespace}/{name}: {exc}")) from exc
        return dict(self.api_client.sanitize_for_serialization(result))  # type: ignore[no-untyped-call]

    def namespace_labels(self, name: str) -> dict[str, str]:
        """The labels of a namespace (Pod Security levels live there)."""
        try:
            result = self._core.read_namespace(name, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            raise error_from(exc, what=f"get namespace {name}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Transient(_short(f"get namespace {name}: {exc}")) from exc
        return dict((result.metadata.labels if result.metadata else None) or {})

    def add_ephemeral_container(
        self, *, namespace: str, name: str, body: Mapping[str, Any]
    ) -> None:
        """PATCH ``pods/NAME/ephemeralcontainers`` (strategic merge: merges by name)."""
        try:
            self._core.patch_namespaced_pod_ephemeralcontainers(
                name,
                namespace,
                dict(body),
                _request_timeout=REQUEST_TIMEOUT,
                _content_type="application/strategic-merge-patch+json",
            )
        except ApiException as exc:
            raise error_from(exc, what=f"add debug container to pod {namespace}/{name}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Transient(_short(f"patch pod {namespace}/{name}: {exc}")) from exc

    def resize_pod(self, *, namespace: str, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """PATCH ``pods/NAME/resize`` (strategic merge: containers merge by name); only
        container resources change. The pod as the API server returns it (status
        included). ``Rejected`` when the API server refuses the resize (a QoS class change,
        a limit below what the node allows...)."""
        what = f"resize pod {namespace}/{name}"
        try:
            result = self._core.patch_namespaced_pod_resize(
                name,
                namespace,
                dict(body),
                _request_timeout=REQUEST_TIMEOUT,
                _content_type="application/strategic-merge-patch+json",
            )
        except ApiException as exc:
            raise error_from(exc, what=what) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Transient(_short(f"{what}: {exc}")) from exc
        return dict(self.api_client.sanitize_for_serialization(result))  # type: ignore[no-untyped-call]

    def evict_pod(self, *, namespace: str, name: str, uid: str | None = None) -> None:
        """POST a policy/v1 Eviction for the pod (never a plain delete): the API server
        holds it to the pod's PodDisruptionBudgets (429 while one allows no disruption).
        With ``uid``, only that instance: a StatefulSet's replacement has the same name,
        and a stale decision must not evict it (``Conflict``)."""
        delete_options: dict[str, Any] = {}
        if uid:
            delete_options["preconditions"] = {"uid": uid}
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
            **({"deleteOptions": delete_options} if delete_options else {}),
        }
        what = f"evict pod {namespace}/{name}"
        try:
            # The client serialises a plain dict as it would its V1Eviction model.
            self._core.create_namespaced_pod_eviction(
                name, namespace, cast(Any, body), _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            raise error_from(exc, what=what) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Transient(_short(f"{what}: {exc}")) from exc

    def list_pods(self, namespace: str) -> list[dict[str, Any]]:
        """Every pod of a namespace as plain dicts (parsed from the raw response, not
        turned into the client's model objects), terminating ones included."""
        return self._raw_items(
            f"list pods in {namespace}",
            lambda: self._core.list_namespaced_pod(
                namespace, _request_timeout=REQUEST_TIMEOUT, _preload_content=False
            ),
        )

    def list_disruption_budgets(self, namespace: str) -> list[dict[str, Any]]:
        """The PodDisruptionBudgets of a namespace as plain dicts."""
        return self._raw_items(
            f"list poddisruptionbudgets in {namespace}",
            lambda: self._policy.list_namespaced_pod_disruption_budget(
                namespace, _request_timeout=REQUEST_TIMEOUT, _preload_content=False
            ),
        )

    def read_lease(
        self, *, namespace: str, name: str, timeout: float = REQUEST_TIMEOUT
    ) -> dict[str, Any] | None:
        """The Lease as a plain dict; None when it does not exist (leader election)."""
        try:
            return self._raw(
                f"read lease {namespace}/{name}",
                lambda: self._coordination.read_namespaced_lease(
                    name, namespace, _request_timeout=timeout, _preload_content=False
                ),
            )
        except NotFound:
            return None

    def write_lease(
        self,
        *,
        namespace: str,
        name: str,
        spec: Mapping[str, Any],
        resource_version: str | None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> dict[str, Any]:
        """Create the Lease (``resource_version`` None) or replace it at that version:
        ``Conflict`` when another replica wrote it since it was read."""
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/name": "memwarden"},
                **({"resourceVersion": resource_version} if resource_version else {}),
            },
            "spec": dict(spec),
        }
        if resource_version is None:
            return self._raw(
                f"create lease {namespace}/{name}",
                lambda: self._coordination.create_namespaced_lease(
                    namespace, cast(Any, body), _request_timeout=timeout, _preload_content=False
                ),
            )
        return self._raw(
            f"update lease {namespace}/{name}",
            lambda: self._coordination.replace_namespaced_lease(
                name, namespace, cast(Any, body), _request_timeout=timeout, _preload_content=False
            ),
        )

    @staticmethod
    def _raw(what: str, call: Callable[[], Any]) -> dict[str, Any]:
        """A call made with ``_preload_content=False``: its object as a plain dict."""
        try:
            response = call()
        except ApiException as exc:
            raise error_from(exc, what=what) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Transient(_short(f"{what}: {exc}")) from exc
        return dict(json.loads(cast(urllib3.HTTPResponse, response).data))

    @staticmethod
    def _raw_items(what: str, call: Callable[[], Any]) -> list[dict[str, Any]]:
        """A list call made with ``_preload_content=False``: its items as plain dicts."""
        try:
            response = call()
        except ApiException as exc:
            raise error_from(exc, what=what) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Transient(_short(f"{what}: {exc}")) from exc
        data = cast(urllib3.HTTPResponse, response).data
        return [dict(item) for item in json.loads(data).get("items") or []]

    def post_event(self, obj: Mapping[str, Any], *, type: str, reason: str, message: str) -> None:
        """A core/v1 Event on ``obj``, as kopf writes them. For code that runs outside a
        kopf handler (the evidence API), where ``kopf.event`` has no queue to post to."""
        meta = obj.get("metadata") or {}
        now = dt.datetime.now(dt.UTC)
        body: dict[str, Any] = {
            "metadata": {"generateName": f"{meta.get('name', 'object')}."},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
            "type": type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": EVENT_COMPONENT},
            "reportingComponent": EVENT_COMPONENT,
            "reportingInstance": EVENT_INSTANCE,
            "firstTimestamp": now.isoformat(),
            "lastTimestamp": now.isoformat(),
            "count": 1,
        }
        namespace = str(meta.get("namespace") or "default")
        try:
            # The client serialises a plain dict as it would its CoreV1Event model.
            self._core.create_namespaced_event(
                namespace, cast(Any, body), _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            raise error_from(exc, what=f"post Event {reason} in {namespace}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Transient(_short(f"post Event {reason} in {namespace}: {exc}")) from exc

    async def acreate(
        self, resource: CustomResource, *, namespace: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        return await asyncio.to_thread(self.create, resource, namespace=namespace, body=body)

    async def apatch_status(
        self,
        resource: CustomResource,
        *,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
    ) -> dict[str, Any]:
        return await asyncio.to_thread(
            self.patch_status, resource, namespace=namespace, name=name, patch=patch
        )

    async def apost_event(
        self, obj: Mapping[str, Any], *, type: str, reason: str, message: str
    ) -> None:
        """``post_event`` off the event loop, best effort: a refused Event is logged at
        DEBUG and dropped (the object's status is the record; the Event tells it)."""
        try:
            await asyncio.to_thread(self.post_event, obj, type=type, reason=reason, message=message)
        except KubeError as exc:
            _log.debug("%s Event not posted: %s", reason, exc)

    async def alist_objects(
        self, resource: CustomResource, *, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.list_objects, resource, namespace=namespace)


__all__ = [
    "EVENT_COMPONENT",
    "EVENT_INSTANCE",
    "FIELD_MANAGER",
    "INCIDENTS",
    "POLICIES",
    "Conflict",
    "CustomResource",
    "Kube",
    "KubeError",
    "NotFound",
    "Rejected",
    "Transient",
    "error_from",
    "user_agent",
]
