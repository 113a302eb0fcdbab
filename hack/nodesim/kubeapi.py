"""The node simulator's adapter over the kubernetes client: JSON dicts in, JSON dicts out.

Test infrastructure. The simulator writes pod and node status as plain JSON objects (what
the API server holds) rather than the client's generated models, so that fields it does
not own survive a read-modify-write. Errors become ``NotFound``, ``Conflict``,
``Invalid`` or ``Transient`` (raised ``from`` the client's exception); response bodies are
cut short in messages. No decisions here: callers decide when to retry.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

JsonObject = dict[str, Any]

#: (connect, read) seconds for ordinary calls: the local API server answers in
#: milliseconds, and a hung call must not stall a pod worker for long.
REQUEST_TIMEOUT = (5.0, 30.0)

#: Longest body excerpt kept in an error message.
_BODY_EXCERPT = 300

PATCH_TYPES = {
    "strategic": "application/strategic-merge-patch+json",
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
}


class ApiError(Exception):
    """A failed API call; ``status`` is the HTTP status (0 when there was no answer)."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class NotFound(ApiError):
    """404: the object does not exist (any more)."""


class Conflict(ApiError):
    """409: stale resourceVersion, or the object already exists."""


class Invalid(ApiError):
    """400/422 and other 4xx: the request itself is wrong; retrying will not help."""


class Transient(ApiError):
    """5xx, 429, timeouts, refused connections: worth retrying after a delay."""


def _error_for(status: int, message: str) -> ApiError:
    if status == 404:
        return NotFound(message, status=status)
    if status == 409:
        return Conflict(message, status=status)
    if status == 429 or status >= 500 or status == 0:
        return Transient(message, status=status)
    return Invalid(message, status=status)


def api_client(kubeconfig: Path) -> client.ApiClient:
    """An ApiClient for ``kubeconfig`` with a connection pool sized for one thread per pod."""
    configuration = client.Configuration()
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig), client_configuration=configuration
    )
    # The default pool (cpu count × 5) is smaller than the number of pod workers that may
    # write status at once; a full pool only logs warnings, but it also drops connections.
    configuration.connection_pool_maxsize = 64
    return client.ApiClient(configuration)


class Kube:
    """Thread-safe thin wrapper over one ``ApiClient`` (urllib3's pool is thread-safe)."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Path) -> Kube:
        return cls(api_client(kubeconfig))

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]

    # --- plain requests ----------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> JsonObject:
        """One API call; the decoded JSON answer, or an ``ApiError``."""
        response = self._send(
            method, path, query=query, body=body, content_type=content_type, timeout=timeout
        )
        try:
            data = response.read()
        except urllib3.exceptions.HTTPError as exc:
            raise Transient(f"{method} {path}: reading the answer failed: {exc}") from exc
        if not 200 <= response.status <= 299:
            text = (data or b"").decode(errors="replace")
            raise _error_for(response.status, f"{method} {path}: {response.status} {_reason(text)}")
        decoded: JsonObject = json.loads(data) if data else {}
        return decoded

    def get(self, path: str, *, query: Mapping[str, str | int] | None = None) -> JsonObject:
        return self.request("GET", path, query=query)

    def create(self, path: str, body: JsonObject) -> JsonObject:
        return self.request("POST", path, body=body)

    def replace(self, path: str, body: JsonObject) -> JsonObject:
        return self.request("PUT", path, body=body)

    def patch(self, path: str, body: Any, *, patch_type: str = "strategic") -> JsonObject:
        return self.request("PATCH", path, body=body, content_type=PATCH_TYPES[patch_type])

    def delete(
        self,
        path: str,
        *,
        grace_period_seconds: int | None = None,
        uid: str | None = None,
    ) -> JsonObject:
        options: JsonObject = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        if uid is not None:
            options["preconditions"] = {"uid": uid}
        return self.request("DELETE", path, body=options)

    # --- watch -------------------------------------------------------------------------

    def watch(
        self, path: str, *, query: Mapping[str, str | int], timeout_seconds: int = 60
    ) -> Iterator[JsonObject]:
        """Stream watch events (``{"type": ..., "object": {...}}``) until the server ends it.

        An ``ERROR`` event is raised as the matching ``ApiError`` (410 Gone is ``Invalid``
        with status 410: the caller relists).
        """
        full_query = {**query, "watch": "true", "timeoutSeconds": timeout_seconds}
        response = self._send(
            "GET",
            path,
            query=full_query,
            body=None,
            content_type="application/json",
            timeout=(REQUEST_TIMEOUT[0], timeout_seconds + 15.0),
        )
        raw = response.response
        try:
            if not 200 <= response.status <= 299:
                text = response.read().decode(errors="replace")
                raise _error_for(response.status, f"WATCH {path}: {_reason(text)}")
            for line in iter_resp_lines(raw):  # type: ignore[no-untyped-call]
                if not line:
                    continue
                event: JsonObject = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object", {})
                    code = int(status.get("code", 0))
                    raise _error_for(code, f"WATCH {path}: {status.get('message', '')}")
                yield event
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Transient(f"WATCH {path}: stream broke: {exc}") from exc
        finally:
            raw.release_conn()

    # --- internals ---------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int] | None,
        body: Any,
        content_type: str,
        timeout: tuple[float, float],
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            serialized = self._api.param_serialize(
                method=method,
                resource_path=path,
                query_params=list((query or {}).items()),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            return self._api.call_api(*serialized, _request_timeout=timeout)
        except ApiException as exc:
            raise _error_for(exc.status or 0, f"{method} {path}: {exc.reason}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Transient(f"{method} {path}: {exc}") from exc


def _reason(text: str) -> str:
    """The message of a Kubernetes ``Status`` body, else the start of the body."""
    try:
        status = json.loads(text)
        message = str(status.get("message") or status.get("reason") or text)
    except (ValueError, AttributeError):
        message = text
    return message[:_BODY_EXCERPT]


# --- paths ---------------------------------------------------------------------------


def pod_path(namespace: str, name: str = "", subresource: str = "") -> str:
    path = f"/api/v1/namespaces/{quote(namespace)}/pods"
    if name:
        path += f"/{quote(name)}"
    if subresource:
        path += f"/{subresource}"
    return path


def node_path(name: str = "", subresource: str = "") -> str:
    path = "/api/v1/nodes"
    if name:
        path += f"/{quote(name)}"
    if subresource:
        path += f"/{subresource}"
    return path


def lease_path(namespace: str, name: str = "") -> str:
    path = f"/apis/coordination.k8s.io/v1/namespaces/{quote(namespace)}/leases"
    return f"{path}/{quote(name)}" if name else path


def namespaced_path(kind_plural: str, namespace: str, name: str) -> str:
    """Core-group objects the env resolver reads: ``configmaps``, ``secrets``."""
    return f"/api/v1/namespaces/{quote(namespace)}/{kind_plural}/{quote(name)}"
