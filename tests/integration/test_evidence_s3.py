"""The evidence API with the S3 store, against the real control plane and a real S3 server
(SeaweedFS ``weed``, tests/memwarden_testing/s3.py): round trip, write-once, size cap,
quota, retention, sweep of abandoned uploads, deletion with the incident, credentials.

Most tests serve the evidence API in-process as test_evidence_api.py does (the real
KubeAuthorizer, TokenReview and SubjectAccessReview; the test plays the capture by setting
the incident's phase and its pod's address). The deletion and wrong-credential tests run
the operator itself (``memwarden run``) with the S3 backend.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from memwarden.api import GROUP, VERSION
from memwarden.evidence.adapters.api import bundle_url, make_evidence_app
from memwarden.evidence.adapters.auth import KubeAuthorizer
from memwarden.evidence.adapters.s3store import S3Config, S3EvidenceStore
from memwarden.evidence.adapters.store import (
    BundleMeta,
    DiskLimits,
    StoreUnavailable,
    apply_retention,
)
from memwarden.evidence.tokens import issue_upload_token
from memwarden_testing.builders import make_pod
from memwarden_testing.cluster import ensure_namespace, wait_for
from memwarden_testing.evidence import (
    KEY,
    EvidenceServer,
    api_lookups,
    grant_evidence_reader,
    make_bundle,
)
from memwarden_testing.evidence import make_incident as incident_object
from memwarden_testing.operator import OperatorProcess, operators_paused
from memwarden_testing.s3 import (
    ACCESS_KEY,
    OUTSIDER_ACCESS_KEY,
    OUTSIDER_SECRET_KEY,
    SECRET_KEY,
    WeedServer,
)

PLURAL = "memoryincidents"
PREFIX = "/evidence"
KIB = 1024
MAX_BUNDLE = 2 * 2**20
PART = 5 * 2**20


@dataclass
class S3Evidence:
    server: EvidenceServer
    store: S3EvidenceStore
    s3: WeedServer

    def url(self, namespace: str, name: str | None = None, *, bundle: bool = False) -> str:
        base = self.server.url + PREFIX
        if bundle and name is not None:
            return bundle_url(base, namespace=namespace, name=name)
        return f"{base}/v1/namespaces/{namespace}/incidents" + (f"/{name}" if name else "")

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, url, verify=str(self.server.ca_file), timeout=60, **kwargs)

    def keys(self, namespace: str) -> list[str]:
        return self.s3.keys(f"{self.store.prefix}{namespace}/")


@pytest.fixture(scope="module", autouse=True)
def no_operator() -> Iterator[None]:
    """The test's evidence server plays the operator on these incidents (as in
    test_evidence_api.py): a running operator is paused meanwhile."""
    with operators_paused():
        yield


def _store(s3: WeedServer, **overrides: Any) -> S3EvidenceStore:
    """A store on the session's bucket under its own prefix (tests do not see each other)."""
    config = {
        "bucket": "memwarden-evidence",
        "endpoint_url": s3.endpoint,
        "prefix": f"t-{secrets.token_hex(4)}/",
        "addressing_style": "path",
        "part_bytes": PART,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        **overrides,
    }
    return S3EvidenceStore(S3Config(**config))


def _serve(
    kube: client.ApiClient,
    workdir: Path,
    store: S3EvidenceStore,
    s3: WeedServer,
    *,
    disk: DiskLimits | None = None,
) -> S3Evidence:
    custom = client.CustomObjectsApi(kube)

    incident, pod_addresses = api_lookups(kube)

    async def on_stored(namespace: str, name: str, meta: BundleMeta) -> None:
        await asyncio.to_thread(
            custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": {"phase": "Collected", "bundleSha256": meta.sha256}},
        )

    app = make_evidence_app(
        store=store,
        authorizer=KubeAuthorizer(kube, audiences=("memwarden",)),
        upload_key=KEY,
        max_bundle_bytes=MAX_BUNDLE,
        incident=incident,
        pod_addresses=pod_addresses,
        on_stored=on_stored,
        idle_timeout=5,
        disk=disk,
    )
    root = web.Application()
    root.add_subapp(PREFIX, app)
    return S3Evidence(server=EvidenceServer(root, workdir=workdir).start(), store=store, s3=s3)


@pytest.fixture(scope="module")
def evidence(
    crds: Path,
    kube: client.ApiClient,
    s3_server: WeedServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[S3Evidence]:
    served = _serve(kube, tmp_path_factory.mktemp("s3-evidence"), _store(s3_server), s3_server)
    yield served
    served.server.stop()


def _capturing_incident(kube: client.ApiClient, namespace: str, name: str) -> str:
    """An incident ``Capturing`` whose pod ``checkout-1`` has the test's address."""
    core = client.CoreV1Api(kube)
    try:
        core.create_namespaced_pod(namespace, make_pod("checkout-1", namespace=namespace))
    except ApiException as exc:
        if exc.status != 409:
            raise
    core.patch_namespaced_pod_status(
        "checkout-1", namespace, {"status": {"podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}}
    )
    custom = client.CustomObjectsApi(kube)
    obj = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, incident_object(name)
    )
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": {"phase": "Capturing"}}
    )
    return str(obj["metadata"]["uid"])


def _token(namespace: str, name: str, uid: str, *, key: bytes = KEY) -> str:
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)
    return issue_upload_token(
        key=key, namespace=namespace, incident=name, uid=uid, expires_at=expires
    )


def _chunks(data: bytes, size: int = 64 * KIB) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _upload(
    evidence: S3Evidence, namespace: str, name: str, uid: str, data: bytes, *, chunked: bool = True
) -> requests.Response:
    """Chunked as the toolbox streams (reserving the per-bundle cap), or with a
    Content-Length (reserving that)."""
    return evidence.request(
        "PUT",
        evidence.url(namespace, name, bundle=True),
        data=_chunks(data) if chunked else data,
        headers={"Authorization": f"Bearer {_token(namespace, name, uid)}"},
    )


def _reader_token(kube: client.ApiClient, namespace: str, account: str = "sre") -> str:
    core = client.CoreV1Api(kube)
    try:
        core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    request = {"spec": {"expirationSeconds": 600, "audiences": ["memwarden"]}}
    return str(
        core.create_namespaced_service_account_token(account, namespace, request).status.token
    )


def _error(response: requests.Response) -> str:
    body = response.json()
    assert body["status"] == "Failure" and body["code"] == response.status_code, body
    return str(body["message"])


def _download(
    evidence: S3Evidence, namespace: str, name: str, token: str
) -> requests.Response | None:
    response = evidence.request(
        "GET",
        evidence.url(namespace, name, bundle=True),
        headers={"Authorization": f"Bearer {token}"},
    )
    return response if response.status_code == 200 else None


# --- round trip ------------------------------------------------------------------------


def test_a_bundle_round_trips_through_s3_and_is_written_once(
    evidence: S3Evidence, kube: client.ApiClient, namespace: str
) -> None:
    """Upload (several multipart parts' worth is not needed for correctness: 1.3 MiB is one
    part, the benchmark does 1 GiB), download with the reader's RBAC, sha256 end to end."""
    uid = _capturing_incident(kube, namespace, "checkout-1")
    data = make_bundle(padding=1300 * KIB)

    stored = _upload(evidence, namespace, "checkout-1", uid, data)

    assert stored.status_code == 201, stored.text
    assert stored.json()["sha256"] == hashlib.sha256(data).hexdigest()
    keys = evidence.keys(namespace)
    assert sorted(k.rsplit("/", 1)[1].split("-")[0] for k in keys) == ["bundle", "meta.json"]
    assert evidence.s3.multipart_uploads(evidence.store.prefix) == []

    again = _upload(evidence, namespace, "checkout-1", uid, make_bundle())
    assert again.status_code == 409
    assert again.json()["details"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert evidence.keys(namespace) == keys, "the refused upload left nothing"

    token = _reader_token(kube, namespace)
    refused = evidence.request(
        "GET",
        evidence.url(namespace, "checkout-1", bundle=True),
        headers={"Authorization": f"Bearer {token}"},
    )
    assert refused.status_code == 403, "a reader without RBAC gets nothing"
    assert "may not" in _error(refused)

    grant_evidence_reader(kube, namespace, "sre")
    download = wait_for(
        lambda: _download(evidence, namespace, "checkout-1", token), what="the RoleBinding"
    )
    assert hashlib.sha256(download.content).hexdigest() == stored.json()["sha256"]
    assert download.content == data
    assert download.headers["X-Bundle-Sha256"] == stored.json()["sha256"]
    assert int(download.headers["Content-Length"]) == len(data)
    listing = evidence.request(
        "GET", evidence.url(namespace), headers={"Authorization": f"Bearer {token}"}
    )
    assert [i["name"] for i in listing.json()["items"]] == ["checkout-1"]
    # The grant is for this namespace: another's bundle, asked for plainly or through a
    # crafted name, is refused before any key is built.
    auth = {"Authorization": f"Bearer {token}"}
    other = evidence.request(
        "GET", evidence.url("default", "checkout-1", bundle=True), headers=auth
    )
    assert other.status_code == 403
    for crafted in (f"..%2F{namespace}", f"checkout-1%2F..%2F..%2F{namespace}"):
        url = f"{evidence.server.url}{PREFIX}/v1/namespaces/default/incidents/{crafted}/bundle"
        assert evidence.request("GET", url, headers=auth).status_code in (400, 404), crafted


def test_presigned_downloads_redirect_only_after_authorisation(
    crds: Path, kube: client.ApiClient, s3_server: WeedServer, namespace: str, tmp_path: Path
) -> None:
    """Opt-in: an authorised download is a 307 to a presigned GET valid 30 s; an
    unauthorised one still gets 403 and no URL."""
    evidence = _serve(kube, tmp_path, _store(s3_server, presign_seconds=30), s3_server)
    try:
        uid = _capturing_incident(kube, namespace, "checkout-1")
        data = make_bundle(padding=300 * KIB)
        assert _upload(evidence, namespace, "checkout-1", uid, data).status_code == 201
        token = _reader_token(kube, namespace)
        url = evidence.url(namespace, "checkout-1", bundle=True)
        auth = {"Authorization": f"Bearer {token}"}

        refused = evidence.request("GET", url, headers=auth, allow_redirects=False)
        assert refused.status_code == 403 and "Location" not in refused.headers

        grant_evidence_reader(kube, namespace, "sre")
        redirect = wait_for(
            lambda: (
                r
                if (
                    r := evidence.request("GET", url, headers=auth, allow_redirects=False)
                ).status_code
                == 307
                else None
            ),
            what="the RoleBinding",
        )
        location = redirect.headers["Location"]
        assert "X-Amz-Expires=30" in location and redirect.headers["Cache-Control"] == "no-store"
        fetched = requests.get(location, timeout=30)  # no memwarden credential: the URL is one
        assert fetched.status_code == 200
        assert hashlib.sha256(fetched.content).hexdigest() == redirect.headers["X-Bundle-Sha256"]
        assert fetched.content == data
    finally:
        evidence.server.stop()


def test_a_bundle_over_the_cap_gets_413_and_leaves_no_object(
    evidence: S3Evidence, kube: client.ApiClient, namespace: str
) -> None:
    """Streamed past the per-bundle cap (no Content-Length: the cap is found mid-stream):
    the multipart upload is aborted, no object or upload remains."""
    uid = _capturing_incident(kube, namespace, "huge")
    data = make_bundle(padding=MAX_BUNDLE + 100 * KIB)

    response = _upload(evidence, namespace, "huge", uid, data)

    assert response.status_code == 413, response.text
    assert "exceeds the limit" in _error(response)
    assert evidence.keys(namespace) == []
    assert wait_for(
        lambda: evidence.s3.multipart_uploads(f"{evidence.store.prefix}{namespace}/") == [],
        what="the aborted multipart upload to be gone",
    )


def test_a_client_gone_mid_upload_leaves_no_upload_behind(
    evidence: S3Evidence, kube: client.ApiClient, namespace: str
) -> None:
    """The toolbox's connection drops mid-stream: the multipart upload is aborted, nothing
    is left in the bucket, and the incident can still receive its bundle."""
    uid = _capturing_incident(kube, namespace, "dropped")
    data = make_bundle(padding=MAX_BUNDLE - 100 * KIB)
    sent = threading.Event()

    def dropping() -> Iterator[bytes]:
        yield from _chunks(data[: len(data) - 1000])
        sent.set()
        raise ConnectionAbortedError("the toolbox died")

    with pytest.raises(requests.RequestException):
        evidence.request(
            "PUT",
            evidence.url(namespace, "dropped", bundle=True),
            data=dropping(),
            headers={"Authorization": f"Bearer {_token(namespace, 'dropped', uid)}"},
        )
    assert sent.is_set()
    folder = f"{evidence.store.prefix}{namespace}/"
    wait_for(
        lambda: evidence.s3.multipart_uploads(folder) == [] and evidence.keys(namespace) == [],
        timeout=30,
        what="the abandoned upload aborted (the API's idle timeout is 5 s)",
    )
    retry = _upload(evidence, namespace, "dropped", uid, data)
    assert retry.status_code == 201, "the dropped upload did not use the incident up"


def test_keys_are_built_from_validated_names_only(evidence: S3Evidence) -> None:
    """A tenant cannot reach another namespace's objects through a crafted name: every key
    is ``<prefix><namespace>/<incident>/<fixed name>`` with names that passed validation."""
    store = evidence.store
    for namespace, name in [("a/../b", "x"), ("a", "../b/x"), ("a", "x/meta.json"), ("..", "x")]:
        with pytest.raises(ValueError, match="invalid"):
            store.key(namespace, name, "meta.json")
    with pytest.raises(ValueError, match="invalid object name"):
        store.key("a", "x", "../../b/x/meta.json")
    assert store.key("a", "x.y", "meta.json") == f"{store.prefix}a/x.y/meta.json"


# --- quota, retention, sweep -----------------------------------------------------------


def test_quota_is_counted_from_the_bucket_and_retention_deletes_from_it(
    crds: Path,
    kube: client.ApiClient,
    s3_server: WeedServer,
    namespace: str,
    tmp_path: Path,
) -> None:
    evidence = _serve(
        kube,
        tmp_path,
        _store(s3_server),
        s3_server,
        disk=DiskLimits(total_bytes=None, namespace_bytes=400 * KIB),
    )
    try:
        first_uid = _capturing_incident(kube, namespace, "first")
        first = make_bundle(padding=300 * KIB)
        stored = _upload(evidence, namespace, "first", first_uid, first, chunked=False)
        assert stored.status_code == 201, stored.text

        second_uid = _capturing_incident(kube, namespace, "second")
        second = make_bundle(padding=200 * KIB)
        over = _upload(evidence, namespace, "second", second_uid, second, chunked=False)

        assert over.status_code == 507, over.text
        assert f"namespace {namespace} is over its evidence quota" in _error(over)
        assert not evidence.store.exists(namespace, "second")

        # Retention by age: "now" a week and a minute later, the bundle goes from the bucket.
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=7, minutes=1)
        deleted = apply_retention(
            evidence.store, now=later, max_age=dt.timedelta(days=7), namespace_max_bytes=None
        )
        assert [(e.namespace, e.incident) for e in deleted] == [(namespace, "first")]
        assert evidence.keys(namespace) == []
        again = _upload(evidence, namespace, "second", second_uid, second, chunked=False)
        assert again.status_code == 201, "the quota is free again"
    finally:
        evidence.server.stop()


def test_the_sweep_aborts_abandoned_uploads_and_uncommitted_objects(
    s3_server: WeedServer,
) -> None:
    """A crash mid-upload leaves a multipart upload; one after the bundle but before its
    commit record leaves an object nothing names: both go once older than the sweep's age."""
    store = _store(s3_server)
    abandoned = store.open_upload("shop", "crashed", uid="u1", max_bytes=MAX_BUNDLE)
    abandoned.write(b"\x1f\x8b" + b"x" * 1000)
    orphan = store.key("shop", "half", "bundle-0123456789abcdef.tar.gz")
    s3_server.client().put_object(Bucket="memwarden-evidence", Key=orphan, Body=b"partial")
    now = dt.datetime.now(dt.UTC)

    assert store.sweep_partial(now=now, older_than=dt.timedelta(hours=1)) == []
    removed = store.sweep_partial(now=now + dt.timedelta(hours=2), older_than=dt.timedelta(hours=1))

    assert len(removed) == 2, removed
    assert s3_server.multipart_uploads(store.prefix) == []
    assert s3_server.keys(store.prefix) == []


def test_a_second_writer_cannot_replace_a_committed_bundle(s3_server: WeedServer) -> None:
    """Two replicas racing on one incident: each writes its own object, the commit record
    is written once (If-None-Match); the loser's object is deleted, the winner's kept."""
    store = _store(s3_server)
    first = store.open_upload("shop", "raced", uid="u1", max_bytes=MAX_BUNDLE)
    second = store.open_upload("shop", "raced", uid="u1", max_bytes=MAX_BUNDLE)
    first.write(b"\x1f\x8bfirst")
    second.write(b"\x1f\x8bsecond")
    now = dt.datetime.now(dt.UTC)
    winner = first.commit(now=now)

    with pytest.raises(Exception, match="already stored"):
        second.commit(now=now)

    assert store.meta("shop", "raced") == winner
    reader = store.open_bundle("shop", "raced")
    assert reader.read(100) == b"\x1f\x8bfirst"
    reader.close()
    assert len(s3_server.keys(store.prefix)) == 2, "the loser's object is gone"


# --- credentials -----------------------------------------------------------------------


def test_a_key_without_rights_is_refused_with_a_clear_error(s3_server: WeedServer) -> None:
    outsider = _store(
        s3_server, access_key_id=OUTSIDER_ACCESS_KEY, secret_access_key=OUTSIDER_SECRET_KEY
    )
    with pytest.raises(StoreUnavailable, match=r"AccessDenied|403"):
        outsider.open_upload("shop", "x", uid="u", max_bytes=MAX_BUNDLE)
    wrong = _store(s3_server, secret_access_key="not-the-secret")
    with pytest.raises(StoreUnavailable, match=r"SignatureDoesNotMatch|InvalidAccessKeyId|Denied"):
        wrong.check()


# --- the operator itself ---------------------------------------------------------------


@pytest.fixture
def s3_operator(
    crds: Path, s3_server: WeedServer, tmp_path: Path, namespace: str
) -> Iterator[OperatorProcess]:
    """``memwarden run`` with the S3 backend, watching the test's namespace only."""
    process = OperatorProcess(
        kubeconfig=crds,
        workdir=tmp_path,
        extra_env={
            **s3_server.env(),
            "MEMWARDEN_EVIDENCE_S3_PREFIX": f"op-{secrets.token_hex(4)}/",
        },
        extra_args=[f"--namespace={namespace}"],
    )
    process.make_certificates()
    process.start()
    yield process
    process.stop()


def test_deleting_the_incident_deletes_its_objects(
    s3_operator: OperatorProcess, s3_server: WeedServer, kube: client.ApiClient, namespace: str
) -> None:
    prefix = s3_operator.extra_env["MEMWARDEN_EVIDENCE_S3_PREFIX"]
    custom = client.CustomObjectsApi(kube)
    obj = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, incident_object("gone")
    )
    wait_for(
        lambda: (
            custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "gone")
            .get("metadata", {})
            .get("finalizers")
        ),
        what="the operator to take the incident (its finalizer)",
    )
    store = _store(s3_server, prefix=prefix)
    with store.open_upload(
        namespace, "gone", uid=obj["metadata"]["uid"], max_bytes=MAX_BUNDLE
    ) as w:
        w.write(make_bundle())
        w.commit(now=dt.datetime.now(dt.UTC))
    assert len(s3_server.keys(f"{prefix}{namespace}/gone/")) == 2

    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "gone")

    wait_for(lambda: s3_server.keys(f"{prefix}{namespace}/") == [], what="objects deleted")
    assert not store.exists(namespace, "gone")


@contextmanager
def _operator_beside(
    crds: Path, kube: client.ApiClient, tmp_path: Path, namespace: str, env: dict[str, str]
) -> Iterator[OperatorProcess]:
    """``memwarden run`` with ``env``, watching another namespace: only its evidence API
    acts on the test's incidents (the test plays the capture)."""
    other = f"{namespace}-w"
    ensure_namespace(client.CoreV1Api(kube), other)
    process = OperatorProcess(
        kubeconfig=crds, workdir=tmp_path, extra_env=env, extra_args=[f"--namespace={other}"]
    )
    process.make_certificates()
    process.start()
    try:
        yield process
    finally:
        process.stop()
        client.CoreV1Api(kube).delete_namespace(other)


def _operator_upload(
    process: OperatorProcess, namespace: str, name: str, uid: str, data: bytes
) -> requests.Response:
    key = process.evidence_key_file.read_text().strip().encode()
    return requests.put(
        f"{process.evidence_url}/v1/namespaces/{namespace}/incidents/{name}/bundle",
        data=_chunks(data),
        headers={"Authorization": f"Bearer {_token(namespace, name, uid, key=key)}"},
        verify=str(process.ca_file),
        timeout=60,
    )


def test_the_operator_stores_in_s3_and_completes_the_incident_from_there(
    crds: Path, kube: client.ApiClient, s3_server: WeedServer, tmp_path: Path, namespace: str
) -> None:
    """Through the operator itself: the upload lands in the bucket, the operator analyses
    the bundle read back from S3 and records it in the incident (Collected, sha256), and a
    reader downloads it from the operator."""
    prefix = f"op-{secrets.token_hex(4)}/"
    env = {**s3_server.env(), "MEMWARDEN_EVIDENCE_S3_PREFIX": prefix}
    with _operator_beside(crds, kube, tmp_path, namespace, env) as process:
        uid = _capturing_incident(kube, namespace, "checkout-1")
        data = make_bundle(padding=700 * KIB)
        stored = _operator_upload(process, namespace, "checkout-1", uid, data)
        assert stored.status_code == 201, (
            stored.text,
            client.CustomObjectsApi(kube)
            .get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "checkout-1")
            .get("status"),
            process.log_tail(3000),
        )
        sha = hashlib.sha256(data).hexdigest()
        assert stored.json()["sha256"] == sha
        assert len(s3_server.keys(f"{prefix}{namespace}/checkout-1/")) == 2

        custom = client.CustomObjectsApi(kube)
        status = wait_for(
            lambda: (
                st
                if (
                    st := custom.get_namespaced_custom_object(
                        GROUP, VERSION, namespace, PLURAL, "checkout-1"
                    ).get("status")
                    or {}
                ).get("phase")
                == "Collected"
                else None
            ),
            timeout=60,
            what="the operator to complete the incident from the S3 bundle",
        )
        assert status["bundleSha256"] == sha and status["bundleBytes"] == len(data)

        token = _reader_token(kube, namespace)
        grant_evidence_reader(kube, namespace, "sre")
        url = f"{process.evidence_url}/v1/namespaces/{namespace}/incidents/checkout-1/bundle"

        def download() -> requests.Response | None:
            got = requests.get(
                url,
                headers={"Authorization": f"Bearer {token}"},
                verify=str(process.ca_file),
                timeout=60,
            )
            return got if got.status_code == 200 else None

        assert wait_for(download, what="the RoleBinding").content == data
        assert "Traceback" not in process.log_tail(50000)


def test_wrong_credentials_do_not_stop_the_operator_and_uploads_get_503(
    crds: Path, kube: client.ApiClient, s3_server: WeedServer, tmp_path: Path, namespace: str
) -> None:
    """A wrong secret: the operator runs (admission does not need the store), says what is
    wrong in one log line, and an upload is refused with 503 naming the store's answer."""
    env = {**s3_server.env(secret_key="wrong-secret"), "MEMWARDEN_EVIDENCE_S3_PREFIX": "w/"}
    with _operator_beside(crds, kube, tmp_path, namespace, env) as process:
        wait_for(
            lambda: "S3 evidence store" in process.log_tail(20000), what="the store's error logged"
        )
        uid = _capturing_incident(kube, namespace, "checkout-1")
        response = _operator_upload(process, namespace, "checkout-1", uid, make_bundle())
        assert response.status_code == 503, response.text
        assert "SignatureDoesNotMatch" in _error(response)
        assert process.healthy()
        log = process.log_tail(50000)
        assert "SignatureDoesNotMatch" in log and "Traceback" not in log
