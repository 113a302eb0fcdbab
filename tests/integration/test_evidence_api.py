"""The evidence API against the real control plane: upload tokens, TokenReview + RBAC, CLI.

The app runs over TLS on loopback with the real :class:`KubeAuthorizer`; the operator's
identity is the admin kubeconfig. The test stands in for the operator's wiring:
``incident`` reads the MemoryIncident, ``pod_addresses`` its pod, ``on_stored`` records the
bundle in its status. There is no node: a test plays the capture by setting the pod's
address (its own, 127.0.0.1) and the incident's ``Capturing`` phase through the API.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import http.client
import json
import re
import ssl
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from aiohttp import web
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from memwarden import cli
from memwarden.api import GROUP, VERSION
from memwarden.evidence.adapters.api import bundle_url, make_evidence_app
from memwarden.evidence.adapters.auth import Denied, Identity, KubeAuthorizer
from memwarden.evidence.adapters.store import BundleMeta, DiskLimits, EvidenceStore, apply_retention
from memwarden.evidence.tokens import UPLOAD_SIZE_HEADER, issue_upload_token
from memwarden_testing.builders import make_pod
from memwarden_testing.cluster import ensure_namespace, kubectl, wait_for
from memwarden_testing.evidence import (
    KEY,
    EvidenceServer,
    api_lookups,
    grant_evidence_reader,
    make_bundle,
    make_incident,
)
from memwarden_testing.operator import operators_paused

MAX_BUNDLE = 1024 * 1024
#: The operator's default (settings.evidence.token_audiences).
AUDIENCES = ("memwarden",)
PLURAL = "memoryincidents"
PREFIX = "/evidence"


@dataclass
class Evidence:
    """The running API, its store, and what its ``on_stored`` hook saw."""

    server: EvidenceServer
    store: EvidenceStore
    stored: list[tuple[str, str, BundleMeta]] = field(default_factory=list)

    @property
    def base(self) -> str:
        """What users pass as --evidence-url: the operator mounts the API at /evidence."""
        return self.server.url + PREFIX

    def url(self, namespace: str, name: str | None = None, *, bundle: bool = False) -> str:
        if bundle and name is not None:
            return bundle_url(self.base, namespace=namespace, name=name)
        path = f"{self.base}/v1/namespaces/{namespace}/incidents"
        return path + (f"/{name}" if name is not None else "")

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, url, verify=str(self.server.ca_file), timeout=30, **kwargs)


@pytest.fixture(scope="module", autouse=True)
def no_operator() -> Iterator[None]:
    """The ``evidence`` server below completes incidents as the operator would; the
    session's operator, if an earlier test started it, is paused so it does not race it."""
    with operators_paused():
        yield


def _serve_evidence(
    kube: client.ApiClient, workdir: Path, *, disk: DiskLimits | None = None
) -> Evidence:
    """The evidence API over TLS, wired as the operator wires it (``disk``: its caps)."""
    custom = client.CustomObjectsApi(kube)
    store = EvidenceStore(workdir / "store")
    stored: list[tuple[str, str, BundleMeta]] = []

    incident, pod_addresses = api_lookups(kube)

    async def on_stored(namespace: str, name: str, meta: BundleMeta) -> None:
        status = {
            "phase": "Collected",
            "bundle": f"evidence://{namespace}/{name}",
            "bundleBytes": meta.bytes,
            "bundleSha256": meta.sha256,
            "analysis": {
                "top": [{"function": "main.(*cache).leak", "flatBytes": 7, "cumBytes": 9}]
            },
        }
        await asyncio.to_thread(
            custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": status},
        )
        stored.append((namespace, name, meta))

    app = make_evidence_app(
        store=store,
        authorizer=KubeAuthorizer(kube, audiences=AUDIENCES),
        upload_key=KEY,
        max_bundle_bytes=MAX_BUNDLE,
        incident=incident,
        pod_addresses=pod_addresses,
        on_stored=on_stored,
        idle_timeout=5,
        disk=disk,
    )
    # Mounted as the operator's HTTP server mounts its sub-apps (handlers/http.py).
    root = web.Application()
    root.add_subapp(PREFIX, app)
    server = EvidenceServer(root, workdir=workdir).start()
    return Evidence(server=server, store=store, stored=stored)


@pytest.fixture(scope="module")
def evidence(
    crds: Path, kube: client.ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Evidence]:
    kubectl(crds, "wait", "--for=condition=Established", "--timeout=60s", f"crd/{PLURAL}.{GROUP}")
    served = _serve_evidence(kube, tmp_path_factory.mktemp("evidence"))
    yield served
    served.server.stop()


def _create_incident(kube: client.ApiClient, namespace: str, name: str) -> str:
    obj = client.CustomObjectsApi(kube).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, make_incident(name)
    )
    return str(obj["metadata"]["uid"])


def _set_phase(kube: client.ApiClient, namespace: str, name: str, phase: str) -> None:
    client.CustomObjectsApi(kube).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": {"phase": phase}}
    )


def _capturing_incident(
    kube: client.ApiClient, namespace: str, name: str, *, pod_ip: str = "127.0.0.1"
) -> str:
    """An incident in its ``Capturing`` phase whose pod ``checkout-1`` has ``pod_ip``: by
    default the test's own address, so its uploads come "from the debug container"."""
    core = client.CoreV1Api(kube)
    try:
        core.create_namespaced_pod(namespace, make_pod("checkout-1", namespace=namespace))
    except ApiException as exc:
        if exc.status != 409:
            raise
    core.patch_namespaced_pod_status(
        "checkout-1", namespace, {"status": {"podIP": pod_ip, "podIPs": [{"ip": pod_ip}]}}
    )
    uid = _create_incident(kube, namespace, name)
    _set_phase(kube, namespace, name, "Capturing")
    return uid


def _token(
    namespace: str, name: str, uid: str, *, ttl: dt.timedelta = dt.timedelta(minutes=10)
) -> str:
    expires = dt.datetime.now(dt.UTC) + ttl
    return issue_upload_token(
        key=KEY, namespace=namespace, incident=name, uid=uid, expires_at=expires
    )


def _chunks(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """A generator body: requests sends it chunked, as the toolbox streams."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _upload(
    evidence: Evidence, namespace: str, name: str, token: str, data: bytes
) -> requests.Response:
    return evidence.request(
        "PUT",
        evidence.url(namespace, name, bundle=True),
        data=_chunks(data),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/gzip"},
    )


def _service_account_token(
    kube: client.ApiClient, namespace: str, name: str, *, audiences: tuple[str, ...] = AUDIENCES
) -> str:
    """A token of ServiceAccount ``name`` (made if missing) for ``audiences`` (empty: the
    API server's own, as a kubeconfig token is)."""
    core = client.CoreV1Api(kube)
    try:
        core.create_namespaced_service_account(
            namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
        )
    except ApiException as exc:
        if exc.status != 409:
            raise
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=list(audiences), expiration_seconds=600)
    )
    return str(core.create_namespaced_service_account_token(name, namespace, request).status.token)


def _error(response: requests.Response) -> str:
    body = response.json()
    assert body["status"] == "Failure" and body["code"] == response.status_code, body
    return str(body["message"])


# --- upload ---------------------------------------------------------------------------


def test_an_upload_is_stored_once_and_recorded(
    evidence: Evidence, kube: client.ApiClient, namespace: str
) -> None:
    uid = _capturing_incident(kube, namespace, "checkout-1")
    token = _token(namespace, "checkout-1", uid)
    data = make_bundle(padding=300 * 1024)

    response = _upload(evidence, namespace, "checkout-1", token, data)

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert (body["bytes"], body["uid"]) == (len(data), uid)
    assert evidence.store.bundle_path(namespace, "checkout-1").read_bytes() == data
    # Poll for the bundle fields, not any status: a running operator also writes the
    # incident's status (its pod does not exist here).
    recorded = wait_for(
        lambda: (
            client.CustomObjectsApi(kube)
            .get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "checkout-1")
            .get("status")
            or {}
        ).get("bundleSha256"),
        what="on_stored to record the bundle in the incident's status",
    )
    assert recorded == body["sha256"]

    replay = _upload(evidence, namespace, "checkout-1", token, make_bundle())
    assert replay.status_code == 409
    assert "already stored" in _error(replay)
    assert replay.json()["details"] == {"bytes": len(data), "sha256": body["sha256"]}
    assert evidence.store.bundle_path(namespace, "checkout-1").read_bytes() == data


TokenFor = Callable[[str, str], str]

REFUSED_UPLOADS = [
    pytest.param(lambda ns, uid: _token(ns, "other", uid), 401, "signature", id="other-incident"),
    pytest.param(
        lambda ns, uid: _token("default", "checkout-1", uid), 401, "signature", id="other-namespace"
    ),
    pytest.param(
        lambda ns, uid: _token(ns, "checkout-1", uid)[:-2] + "AA", 401, "signature", id="tampered"
    ),
    pytest.param(
        lambda ns, uid: _token(ns, "checkout-1", uid, ttl=-dt.timedelta(seconds=1)),
        401,
        "expired",
        id="expired",
    ),
    pytest.param(
        lambda ns, uid: _token(ns, "checkout-1", "a-deleted-incident-uid"),
        403,
        "earlier incident",
        id="earlier-incident-same-name",
    ),
    pytest.param(lambda ns, uid: "mw1.garbage", 401, "malformed", id="garbage-token"),
]


@pytest.mark.parametrize(("token_for", "status", "message"), REFUSED_UPLOADS)
def test_an_upload_with_a_wrong_token_is_refused(
    evidence: Evidence,
    kube: client.ApiClient,
    namespace: str,
    token_for: TokenFor,
    status: int,
    message: str,
) -> None:
    uid = _create_incident(kube, namespace, "checkout-1")
    response = _upload(evidence, namespace, "checkout-1", token_for(namespace, uid), make_bundle())
    assert response.status_code == status
    assert message in _error(response)
    assert not evidence.store.exists(namespace, "checkout-1")


def test_a_second_upload_while_one_is_in_flight_gets_409(
    evidence: Evidence, kube: client.ApiClient, namespace: str
) -> None:
    uid = _capturing_incident(kube, namespace, "checkout-1")
    token = _token(namespace, "checkout-1", uid)
    data = make_bundle(padding=100 * 1024)
    started, release = threading.Event(), threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield data[:1024]
        started.set()
        assert release.wait(timeout=30), "the test never released the first upload"
        yield data[1024:]

    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(
            evidence.request,
            "PUT",
            evidence.url(namespace, "checkout-1", bundle=True),
            data=slow_body(),
            headers={"Authorization": f"Bearer {token}"},
        )
        assert started.wait(timeout=30)
        # A tuple: a 4xx Response is falsy, and wait_for waits for something truthy.
        (second,) = wait_for(
            lambda: (
                (r,)
                if (r := _upload(evidence, namespace, "checkout-1", token, data)).status_code == 409
                else None
            ),
            what="the first upload to be in flight",
        )
        assert "in progress" in _error(second)
        release.set()
        assert first.result(timeout=30).status_code == 201
    assert evidence.store.bundle_path(namespace, "checkout-1").read_bytes() == data


def test_a_token_for_a_missing_incident_gets_404(evidence: Evidence, namespace: str) -> None:
    response = _upload(evidence, namespace, "gone", _token(namespace, "gone", "uid"), make_bundle())
    assert response.status_code == 404
    assert "not found" in _error(response)


def _put_from(
    evidence: Evidence, source: str, url: str, token: str, data: bytes
) -> tuple[int, dict[str, Any]]:
    """A PUT whose connection leaves from ``source``: every 127/8 address is this host's,
    so a test can upload as another pod would."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    context = ssl.create_default_context(cafile=str(evidence.server.ca_file))
    connection = http.client.HTTPSConnection(
        parts.hostname, parts.port, context=context, source_address=(source, 0), timeout=30
    )
    try:
        connection.request(
            "PUT", parts.path, body=data, headers={"Authorization": f"Bearer {token}"}
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def test_a_copied_token_is_refused_from_another_address_and_the_real_upload_lands(
    evidence: Evidence, kube: client.ApiClient, namespace: str
) -> None:
    """The token is in the pod spec for any viewer to copy; only the pod may use it."""
    uid = _capturing_incident(kube, namespace, "checkout-1")  # the pod's address is ours
    token = _token(namespace, "checkout-1", uid)
    url = evidence.url(namespace, "checkout-1", bundle=True)

    status, body = _put_from(evidence, "127.0.0.2", url, token, make_bundle({"heap.pb.gz": b"x"}))

    assert status == 403, body
    assert "accepted only from pod checkout-1, not from 127.0.0.2" in body["message"]
    assert not evidence.store.exists(namespace, "checkout-1")
    real = make_bundle(padding=10 * 1024)
    assert _upload(evidence, namespace, "checkout-1", token, real).status_code == 201
    assert evidence.store.bundle_path(namespace, "checkout-1").read_bytes() == real


@pytest.mark.parametrize(
    ("phase", "status", "message"),
    [
        pytest.param("Pending", 409, "not capturing yet; retry", id="before-the-capture"),
        pytest.param("Failed", 403, "is Failed: its capture is over", id="after-the-capture"),
    ],
)
def test_an_upload_outside_the_capture_is_refused(
    evidence: Evidence,
    kube: client.ApiClient,
    namespace: str,
    phase: str,
    status: int,
    message: str,
) -> None:
    uid = _capturing_incident(kube, namespace, "checkout-1")
    _set_phase(kube, namespace, "checkout-1", phase)

    response = _upload(
        evidence, namespace, "checkout-1", _token(namespace, "checkout-1", uid), make_bundle()
    )

    assert response.status_code == status
    assert message in _error(response)
    assert not evidence.store.exists(namespace, "checkout-1")


GARBAGE = [
    pytest.param("PUT", "/incidents/checkout-1/bundle", {}, b"\x1f\x8b", 401, id="no-auth-header"),
    pytest.param(
        "PUT",
        "/incidents/checkout-1/bundle",
        {"Authorization": "Basic dXNlcjpwdw=="},
        b"\x1f\x8b",
        401,
        id="basic-auth",
    ),
    pytest.param("PUT", "/incidents/Bad_Name/bundle", {}, b"", 400, id="bad-incident-name"),
    pytest.param("PUT", "/incidents/a..b/bundle", {}, b"", 400, id="empty-label"),
    pytest.param("GET", "/incidents/%2E%2E/bundle", {}, b"", 400, id="encoded-dotdot"),
    pytest.param("GET", "/incidents/..%2F..%2Fetc/bundle", {}, b"", 400, id="encoded-slash"),
    pytest.param("GET", "/../../etc/passwd", {}, b"", 404, id="dotdot-path"),
    pytest.param("DELETE", "/incidents/checkout-1/bundle", {}, b"", 405, id="wrong-method"),
    pytest.param("GET", "/incidents/checkout-1/nope", {}, b"", 404, id="unknown-route"),
    pytest.param("GET", "/incidents", {"Authorization": "Bearer"}, b"", 401, id="empty-bearer"),
    pytest.param(
        "GET", "/incidents", {"Authorization": "Bearer not-a-jwt"}, b"", 401, id="invalid-bearer"
    ),
]


@pytest.mark.parametrize(("method", "path", "headers", "body", "status"), GARBAGE)
def test_garbage_gets_a_json_4xx(
    evidence: Evidence,
    namespace: str,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
) -> None:
    url = f"{evidence.base}/v1/namespaces/{namespace}{path}"
    response = evidence.request(method, url, headers=headers, data=body)
    assert response.status_code == status
    _error(response)


@pytest.mark.parametrize(
    "namespace_in_url",
    [
        pytest.param("Bad_NS", id="uppercase"),
        pytest.param("a.b", id="dotted"),
        pytest.param("-x", id="leading-dash"),
        pytest.param("x" * 64, id="too-long"),
    ],
)
def test_an_invalid_namespace_gets_400(evidence: Evidence, namespace_in_url: str) -> None:
    response = evidence.request("GET", evidence.url(namespace_in_url))
    assert response.status_code == 400
    assert "DNS-1123" in _error(response)


BAD_BODIES = [
    pytest.param(b"x" * (MAX_BUNDLE + 1), True, 413, id="too-big-with-length"),
    pytest.param(b"\x1f\x8b" + b"x" * (2 * MAX_BUNDLE), False, 413, id="too-big-chunked"),
    pytest.param(b"PK\x03\x04 a zip file", True, 400, id="not-gzip"),
    pytest.param(b"", True, 400, id="empty"),
]


@pytest.mark.parametrize(("body", "with_length", "status"), BAD_BODIES)
def test_a_bad_body_is_refused_and_leaves_nothing(
    evidence: Evidence,
    kube: client.ApiClient,
    namespace: str,
    body: bytes,
    with_length: bool,
    status: int,
) -> None:
    uid = _capturing_incident(kube, namespace, "checkout-1")
    token = _token(namespace, "checkout-1", uid)
    response = evidence.request(
        "PUT",
        evidence.url(namespace, "checkout-1", bundle=True),
        data=body if with_length else _chunks(body),
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == status
    _error(response)
    assert not (evidence.store.root / namespace).exists()

    retry = _upload(evidence, namespace, "checkout-1", token, make_bundle())
    assert retry.status_code == 201, "a refused upload does not use the token up"


# --- disk: the total cap and the namespace quota ---------------------------------------

KIB = 1024
DISK = DiskLimits(total_bytes=700 * KIB, namespace_bytes=400 * KIB)


@pytest.fixture
def capped_evidence(crds: Path, kube: client.ApiClient, tmp_path: Path) -> Iterator[Evidence]:
    """An evidence API whose store holds 700 KiB in all and 400 KiB per namespace."""
    served = _serve_evidence(kube, tmp_path, disk=DISK)
    yield served
    served.server.stop()


@pytest.fixture
def second_namespace(kube: client.ApiClient, namespace: str) -> Iterator[str]:
    name = f"{namespace}-b"
    ensure_namespace(client.CoreV1Api(kube), name)
    yield name
    client.CoreV1Api(kube).delete_namespace(name)


def _stored_bytes(evidence: Evidence) -> dict[tuple[str, str], bytes]:
    return {
        (e.namespace, e.incident): evidence.store.bundle_path(e.namespace, e.incident).read_bytes()
        for e in evidence.store.entries()
    }


def test_uploads_that_together_exceed_the_cap_are_refused_and_nothing_stored_is_lost(
    capped_evidence: Evidence, kube: client.ApiClient, namespace: str, second_namespace: str
) -> None:
    """Space is reserved before the first byte: while one upload declaring 350 KiB is in
    flight, another of 360 KiB in another namespace does not fit the 700 KiB cap; a
    namespace at its quota is refused while another namespace still uploads; retention
    then deletes nothing to make room."""
    evidence = capped_evidence
    first = make_bundle(padding=340 * KIB)
    uid = _capturing_incident(kube, namespace, "big")
    token = _token(namespace, "big", uid)
    started, release = threading.Event(), threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield first[:1024]
        started.set()
        assert release.wait(timeout=30), "the test never released the first upload"
        yield first[1024:]

    other_uid = _capturing_incident(kube, second_namespace, "rival")
    rival = make_bundle(padding=350 * KIB)
    with ThreadPoolExecutor(max_workers=1) as pool:
        in_flight = pool.submit(
            evidence.request,
            "PUT",
            evidence.url(namespace, "big", bundle=True),
            data=slow_body(),  # chunked: the toolbox declares its most
            headers={"Authorization": f"Bearer {token}", UPLOAD_SIZE_HEADER: str(350 * KIB)},
        )
        assert started.wait(timeout=30)
        wait_for(
            lambda: list((evidence.store.root / namespace / "big").glob(".upload-*")),
            what="the first upload to hold its reservation (its partial file exists)",
        )
        refused = evidence.request(
            "PUT",
            evidence.url(second_namespace, "rival", bundle=True),
            data=rival,  # with a Content-Length
            headers={"Authorization": f"Bearer {_token(second_namespace, 'rival', other_uid)}"},
        )
        assert refused.status_code == 507, refused.text
        assert "evidence store is full" in _error(refused)
        assert refused.headers["Retry-After"]
        release.set()
        landed = in_flight.result(timeout=30)
    assert landed.status_code == 201, landed.text
    assert not evidence.store.exists(second_namespace, "rival"), "a refusal leaves nothing"

    # The first namespace is at its 400 KiB quota; the second one still uploads.
    more_uid = _capturing_incident(kube, namespace, "more")
    over_quota = evidence.request(
        "PUT",
        evidence.url(namespace, "more", bundle=True),
        data=make_bundle(padding=80 * KIB),
        headers={"Authorization": f"Bearer {_token(namespace, 'more', more_uid)}"},
    )
    assert over_quota.status_code == 507
    assert f"namespace {namespace} is over its evidence quota" in _error(over_quota)
    small = make_bundle(padding=100 * KIB)
    accepted = evidence.request(
        "PUT",
        evidence.url(second_namespace, "rival", bundle=True),
        data=small,
        headers={"Authorization": f"Bearer {_token(second_namespace, 'rival', other_uid)}"},
    )
    assert accepted.status_code == 201, accepted.text

    before = _stored_bytes(evidence)
    assert before == {(namespace, "big"): first, (second_namespace, "rival"): small}
    deleted = apply_retention(
        evidence.store,
        now=dt.datetime.now(dt.UTC),
        max_age=dt.timedelta(days=7),
        namespace_max_bytes=DISK.namespace_bytes,
    )
    assert deleted == [] and _stored_bytes(evidence) == before, "nothing stored is lost"


def test_a_declared_size_is_enforced(
    capped_evidence: Evidence, kube: client.ApiClient, namespace: str
) -> None:
    """An upload may not send more than it reserved: the declaration is not a way round
    the caps."""
    uid = _capturing_incident(kube, namespace, "liar")
    response = capped_evidence.request(
        "PUT",
        capped_evidence.url(namespace, "liar", bundle=True),
        data=_chunks(make_bundle(padding=50 * KIB)),
        headers={
            "Authorization": f"Bearer {_token(namespace, 'liar', uid)}",
            UPLOAD_SIZE_HEADER: str(10 * KIB),
        },
    )
    assert response.status_code == 413, response.text
    assert "exceeds the limit of 10240" in _error(response)
    assert not capped_evidence.store.exists(namespace, "liar")


# --- reads: TokenReview + SubjectAccessReview -------------------------------------------


@pytest.fixture
def stored_incident(evidence: Evidence, kube: client.ApiClient, namespace: str) -> bytes:
    """``checkout-1`` in ``namespace`` with an uploaded bundle, recorded in its status."""
    uid = _capturing_incident(kube, namespace, "checkout-1")
    data = make_bundle(padding=200 * 1024)
    response = _upload(
        evidence, namespace, "checkout-1", _token(namespace, "checkout-1", uid), data
    )
    assert response.status_code == 201, response.text
    wait_for(
        lambda: (namespace, "checkout-1") in {(ns, n) for ns, n, _ in evidence.stored},
        what="the on_stored hook",
    )
    return data


def test_reads_need_an_rbac_grant(
    evidence: Evidence, kube: client.ApiClient, namespace: str, stored_incident: bytes
) -> None:
    token = _service_account_token(kube, namespace, "sre")
    auth = {"Authorization": f"Bearer {token}"}

    for url in (
        evidence.url(namespace, "checkout-1", bundle=True),
        evidence.url(namespace, "checkout-1"),
        evidence.url(namespace),
    ):
        refused = evidence.request("GET", url, headers=auth)
        assert refused.status_code == 403, url
        assert f"system:serviceaccount:{namespace}:sre may not" in _error(refused)

    grant_evidence_reader(kube, namespace, "sre")

    download = wait_for(
        lambda: (
            r
            if (
                r := evidence.request(
                    "GET", evidence.url(namespace, "checkout-1", bundle=True), headers=auth
                )
            ).status_code
            == 200
            else None
        ),
        what="the RoleBinding to take effect",
    )
    assert download.content == stored_incident
    assert download.headers["Content-Type"] == "application/gzip"
    assert download.headers["X-Bundle-Sha256"] == hashlib.sha256(stored_incident).hexdigest()
    assert "Content-Encoding" not in download.headers, "the bundle is served as stored"

    listing = evidence.request("GET", evidence.url(namespace), headers=auth)
    assert listing.status_code == 200
    assert [i["name"] for i in listing.json()["items"]] == ["checkout-1"]
    meta = evidence.request("GET", evidence.url(namespace, "checkout-1"), headers=auth)
    assert meta.json()["bytes"] == len(stored_incident)

    other = evidence.request("GET", evidence.url("default"), headers=auth)
    assert other.status_code == 403, "the grant is per namespace"
    missing = evidence.request("GET", evidence.url(namespace, "nope"), headers=auth)
    assert missing.status_code == 404


@pytest.mark.parametrize(
    "audiences",
    [
        pytest.param(("other",), id="another-service"),
        pytest.param((), id="the-api-servers-own"),
    ],
)
def test_a_token_for_another_audience_is_refused(
    evidence: Evidence,
    kube: client.ApiClient,
    namespace: str,
    stored_incident: bytes,
    audiences: tuple[str, ...],
) -> None:
    """Readers' tokens are for memwarden's audience: one made for another service (or the
    API server's, which memwarden could replay there) does not authenticate, even for an
    identity RBAC allows."""
    grant_evidence_reader(kube, namespace, "sre")
    url = evidence.url(namespace, "checkout-1", bundle=True)
    ours = {"Authorization": f"Bearer {_service_account_token(kube, namespace, 'sre')}"}
    wait_for(
        lambda: evidence.request("GET", url, headers=ours).status_code == 200,
        what="the grant, with a token for memwarden",
    )
    theirs = _service_account_token(kube, namespace, "sre", audiences=audiences)

    refused = evidence.request("GET", url, headers={"Authorization": f"Bearer {theirs}"})

    assert refused.status_code == 401
    assert "did not authenticate" in _error(refused)


def test_a_recreated_incident_does_not_inherit_the_earlier_ones_bundle(
    evidence: Evidence, kube: client.ApiClient, namespace: str, stored_incident: bytes
) -> None:
    auth = {"Authorization": f"Bearer {_service_account_token(kube, namespace, 'sre')}"}
    grant_evidence_reader(kube, namespace, "sre")
    meta_url = evidence.url(namespace, "checkout-1")
    bundle = evidence.url(namespace, "checkout-1", bundle=True)
    assert evidence.request("GET", meta_url, headers=auth).status_code == 200
    custom = client.CustomObjectsApi(kube)
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "checkout-1")
    uid = _create_incident(kube, namespace, "checkout-1")  # no operator here: nothing deleted

    for url in (meta_url, bundle):
        refused = evidence.request("GET", url, headers=auth)
        assert refused.status_code == 404, url
        assert "belongs to an earlier incident" in _error(refused)

    # The new incident's own capture replaces the stale bundle.
    _set_phase(kube, namespace, "checkout-1", "Capturing")
    data = make_bundle(padding=50 * 1024)
    upload = _upload(evidence, namespace, "checkout-1", _token(namespace, "checkout-1", uid), data)
    assert upload.status_code == 201, upload.text
    assert evidence.request("GET", bundle, headers=auth).content == data


def test_allowed_decisions_are_cached_briefly(
    kube: client.ApiClient, namespace: str, crds: Path
) -> None:
    token = _service_account_token(kube, namespace, "sre")
    grant_evidence_reader(kube, namespace, "sre")
    now = [0.0]
    authorizer = KubeAuthorizer(kube, cache_ttl=10, clock=lambda: now[0], audiences=AUDIENCES)

    def decide() -> Identity | Denied:
        return asyncio.run(authorizer.authorize(token=token, verb="list", namespace=namespace))

    allowed = wait_for(lambda: isinstance(decide(), Identity), what="the grant")
    assert allowed
    client.RbacAuthorizationV1Api(kube).delete_namespaced_role_binding("evidence-reader", namespace)
    now[0] = 5.0
    assert isinstance(decide(), Identity), "within the TTL the cached decision holds"
    now[0] = 11.0
    denied = wait_for(lambda: d if isinstance(d := decide(), Denied) else None, what="revocation")
    assert denied.status == 403


# --- the CLI --------------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["incidents", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_cli_lists_gets_and_downloads(
    evidence: Evidence,
    kube: client.ApiClient,
    namespace: str,
    stored_incident: bytes,
    devcluster: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The Kubernetes API with the ServiceAccount's own (API server audience) token.
    token = _service_account_token(kube, namespace, "sre", audiences=())
    grant_evidence_reader(kube, namespace, "sre")
    connection = ["--kubeconfig", str(devcluster), "-n", namespace, "--token", token]

    code, out, err = _cli(capsys, "list", *connection)
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split()[:6] == ["NAME", "POD", "SIGNAL", "PHASE", "AGE", "BUNDLE"]
    assert row.split()[:4] == ["checkout-1", "checkout-1", "usageRatio", "Collected"]
    assert "main.(*cache).leak" in row
    assert "KiB" not in row and "Ki" in row

    code, out, err = _cli(capsys, "get", "checkout-1", *connection, "-o", "json")
    assert code == 0, err
    obj = json.loads(out)
    assert obj["status"]["bundleSha256"] == hashlib.sha256(stored_incident).hexdigest()
    assert "managedFields" not in obj["metadata"]

    code, out, err = _cli(capsys, "list", *connection, "-o", "yaml")
    assert code == 0, err
    assert "name: checkout-1" in out

    code, out, err = _cli(capsys, "list", *connection, "-o", "wide")
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split()[-3:] == ["CONTAINER", "SOURCE", "REASON"]
    assert row.split()[:2] == ["checkout-1", "checkout-1"]

    server = ["--evidence-url", evidence.base, "--evidence-ca", str(evidence.server.ca_file)]
    # The admin's kubeconfig holds a client certificate: it asks the API server for a
    # token of the reader ServiceAccount, for memwarden's audience.
    admin = ["--kubeconfig", str(devcluster), "-n", namespace]
    for how, credentials in {
        "service-account": [*admin, "--service-account", "sre"],
        "evidence-token": [
            *connection,
            "--evidence-token",
            _service_account_token(kube, namespace, "sre"),
        ],
    }.items():
        target = tmp_path / f"{how}.tar.gz"
        code, out, err = _cli(
            capsys, "download", "checkout-1", *credentials, "-f", str(target), *server
        )
        assert code == 0, (how, err)
        assert target.read_bytes() == stored_incident
        assert "verified" in out
        assert not err, "no progress bar unless stderr is a terminal (or --progress always)"

    # -o is the output format here too; the bar goes to stderr, the result to stdout.
    target = tmp_path / "progress.tar.gz"
    code, out, err = _cli(
        capsys,
        "download",
        "checkout-1",
        *admin,
        "--service-account",
        "sre",
        *server,
        "--output-file",
        str(target),
        "-o",
        "json",
        "--progress",
        "always",
    )
    assert code == 0, err
    assert json.loads(out) == {
        "file": str(target),
        "bytes": len(stored_incident),
        "sha256": hashlib.sha256(stored_incident).hexdigest(),
        "verified": True,
    }
    # The bar, at its end: the file's name and "done/total" (from Content-Length) equal.
    assert err.startswith("progress.tar.gz"), err
    assert re.search(r"\s(\S+)/\1 KiB", err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "evidence-token.tar.gz",
        "progress.tar.gz",
        "service-account.tar.gz",
    ], "no partial file left"


def test_the_cli_fails_in_one_line(
    evidence: Evidence,
    kube: client.ApiClient,
    namespace: str,
    stored_incident: bytes,
    devcluster: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MEMWARDEN_EVIDENCE_URL", evidence.base)
    monkeypatch.setenv("MEMWARDEN_EVIDENCE_CA", str(evidence.server.ca_file))
    monkeypatch.chdir(tmp_path)
    admin = ["--kubeconfig", str(devcluster), "-n", namespace]
    unprivileged = [*admin, "--evidence-token", _service_account_token(kube, namespace, "nobody")]
    grant_evidence_reader(kube, namespace, "sre")
    kubernetes_token = _service_account_token(kube, namespace, "sre", audiences=())

    cases = {
        "client-certificate": (["download", "checkout-1", *admin], "pass --service-account"),
        "forbidden": (["download", "checkout-1", *unprivileged], "403"),
        "kubernetes-audience": (
            ["download", "checkout-1", *admin, "--token", kubernetes_token],
            "401 Unauthorized: the bearer token did not authenticate (the Kubernetes token",
        ),
        "no-such-service-account": (
            ["download", "checkout-1", *admin, "--service-account", "ghost"],
            "token for serviceaccount",
        ),
        "no-such-incident": (["get", "nope", *admin], 'memoryincident "nope" not found'),
        "plain-http": (
            ["download", "checkout-1", *unprivileged, "--evidence-url", "http://192.0.2.1"],
            "plain http",
        ),
        "bad-kubeconfig": (["list", "--kubeconfig", str(tmp_path / "missing")], "kubeconfig"),
    }
    for case, (args, message) in cases.items():
        code, _, err = _cli(capsys, *args)
        assert code == 2, case
        assert len(err.strip().splitlines()) == 1, (case, err)
        assert message in err, (case, err)
    assert list(tmp_path.iterdir()) == [], "a failed download writes nothing"

    # The bundle changed on disk after the incident recorded its sha256: refused, and
    # the file already at the destination is left as it was.
    granted = [*admin, "--service-account", "sre"]
    (tmp_path / "checkout-1.tar.gz").write_bytes(b"old")
    evidence.store.bundle_path(namespace, "checkout-1").write_bytes(b"\x1f\x8b tampered")
    code, _, err = _cli(capsys, "download", "checkout-1", *granted)
    assert code == 2
    assert "sha256 mismatch" in err
    assert [p.name for p in tmp_path.iterdir()] == ["checkout-1.tar.gz"]
    assert (tmp_path / "checkout-1.tar.gz").read_bytes() == b"old"
