"""Fuzzing the operator's three HTTP surfaces with hypothesis, against the real process.

The session's operator (``memwarden run``, its webhook registered) takes generated
requests on its admission webhook, its Alertmanager receiver and its evidence API:
arbitrary bytes, JSON of any shape, well-formed objects with fields mutated, removed or
of the wrong type, random methods, targets, headers and framings (a Content-Length that
lies, chunked, a broken chunk, none), oversize and gzip-encoded bodies. Each answer
must be 2xx or 4xx, never 5xx, and must come before the client's timeout (a request
whose Content-Length or chunk promises more than it sends is owed none). After each
surface: the process is alive, neither its RSS (from a warmed-up baseline) nor its peak
RSS grew by :data:`RSS_BOUND`, and a well-formed request still gets its right answer.

``MEMWARDEN_FUZZ_EXAMPLES`` sets the examples per surface (default :data:`EXAMPLES`);
examples are derandomized, so a run is reproducible and CI sees what a developer saw.
"""

from __future__ import annotations

import base64
import functools
import gzip
import json
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from kubernetes import client

from memwarden.api import GROUP, VERSION
from memwarden.capture.plan import ENV_UPLOAD_TOKEN
from memwarden.evidence.adapters.store import BUNDLE_FILE
from memwarden.webhook.manifests import POD_HANDLER_ID
from memwarden.webhook.server import MAX_REVIEW_BYTES
from memwarden_testing.alertmanager import make_alert, make_payload, suppressed_counts
from memwarden_testing.builders import (
    make_admission_review,
    make_pod,
    make_policy,
    make_policy_spec,
)
from memwarden_testing.cluster import create_running_pod, metric_sum, wait_for, wait_policy_indexed
from memwarden_testing.evidence import evidence_reader_token, make_bundle, make_incident
from memwarden_testing.fuzzing import (
    DELETE,
    GARBAGE_VALUES,
    JSON,
    POD_PATHS,
    governed_pod,
    mutate,
)
from memwarden_testing.operator import OperatorProcess
from memwarden_testing.rawhttp import (
    FRAMINGS,
    Answer,
    Framing,
    OperatorApi,
    admission_webhook,
    operator_api,
)

pytestmark = pytest.mark.integration

#: Examples per surface. 60 keep the file at about 30 s on a 2-core machine; raise it to
#: search longer (``MEMWARDEN_FUZZ_EXAMPLES=2000``, see docs/development.md).
EXAMPLES = int(os.environ.get("MEMWARDEN_FUZZ_EXAMPLES", "60"))
#: Growth of the operator's RSS (and of its peak) allowed over one surface. The requests
#: carry bodies up to 8 MiB and a gzip body that inflates to 64 MiB: keeping any three of
#: the former, or inflating the latter, exceeds it; what a warmed-up operator grows by
#: anyway (allocator arenas, caches filling) was 7 MiB at most here. Before the fixes
#: found by these tests, three gzip bodies took the webhook run's peak from 101 to 293 MiB.
RSS_BOUND = 30 * 2**20
PLAIN = {"request": "64Mi", "limit": "128Mi"}
#: Governed pods of 512 KiB each, all different, sent to the webhook after its fuzzing.
LARGE_PODS = 120
PLURAL = "memoryincidents"


def fuzz_settings() -> settings:
    """Reproducible (derandomized, no example database in the repository), no deadline
    (a request to a real server varies), function-scoped fixtures shared by examples."""
    return settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )


# --- strategies shared by the surfaces ------------------------------------------------

T = TypeVar("T")


def rarely(common: st.SearchStrategy[T], rare: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """``rare`` one time in eight: input the HTTP parser refuses outright (a bad header
    name, a control byte in the target) must not crowd out what reaches the handlers."""
    return st.integers(0, 7).flatmap(lambda n: rare if n == 0 else common)


#: Any bytes but CR and LF (which would end the line: the framing is the client's).
_NO_BREAKS = st.binary(max_size=64).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
#: Printable ASCII, as a well-behaved client's header values and queries are.
_PRINTABLE = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=64).map(
    str.encode
)
_TOKEN_CHARS = st.binary(min_size=1, max_size=12).map(
    lambda b: bytes(c for c in b if 33 <= c < 127 and c not in b':()<>@,;\\"/[]?={}') or b"X"
)
HEADER_NAMES = rarely(
    st.sampled_from(
        [
            b"Content-Type",
            b"Content-Encoding",
            b"Accept",
            b"Accept-Encoding",
            b"Expect",
            b"User-Agent",
            b"X-Forwarded-For",
            b"Cookie",
            b"Range",
            b"Upgrade",
            b"Authorization",
        ]
    )
    | _TOKEN_CHARS,
    _NO_BREAKS,
)
HEADER_VALUES = st.one_of(
    st.sampled_from(
        [
            b"application/json",
            b"application/json; charset=latin-1",
            b"text/plain",
            b"multipart/form-data; boundary=x",
            b"application/x-www-form-urlencoded",
            b"application/gzip",
            b"gzip",
            b"deflate",
            b"br",
            b"identity, gzip",
            b"100-continue",
            b"bytes=0-10,-5",
            b"websocket",
            b"",
            b"a" * 9000,
        ]
    ),
    rarely(_PRINTABLE, _NO_BREAKS),
)
HEADERS = st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=3)
#: A bearer token: printable garbage mostly, any bytes sometimes.
JUNK_BEARER = rarely(_PRINTABLE, _NO_BREAKS).map(lambda b: b"Bearer " + b)
#: Mostly a true Content-Length, as real clients send.
FRAMING: st.SearchStrategy[Framing] = st.sampled_from(
    ["length"] * 5 + ["chunked"] * 2 + [*FRAMINGS]
)
GZIPPED = [(b"Content-Encoding", b"gzip")]


@functools.cache
def bomb() -> bytes:
    """64 MiB of zeros in ~64 KiB of gzip, sent with ``Content-Encoding: gzip``."""
    return gzip.compress(b"\0" * 64 * 2**20, compresslevel=9)


def check_answer(answer: Answer, *, framing: Framing, what: str, seen: Counter[str]) -> None:
    """Never 5xx; an answer in time to every request that delivered what it announced."""
    seen[str(answer.status)] += 1
    if answer.timed_out:  # owed only when the framing holds what it promises
        assert framing in ("long", "badchunk"), f"no answer within the client's timeout: {what}"
    elif answer.status is None:
        assert not answer.sent, f"the connection closed without an answer: {what}"
    assert answer.status is None or answer.status < 500, (answer.status, answer.body[:300], what)


@dataclass(frozen=True)
class Baseline:
    rss: int
    """The operator's RSS once warmed up."""
    peak: int
    """Its peak RSS before the warm-up."""
    log_offset: int
    """Where its log stood before the warm-up."""


#: Loggers of the servers under test: nothing a client sends is an ERROR of theirs.
SERVER_LOGGERS = re.compile(
    r" ERROR +(aiohttp\.|memwarden\.(http|webhook|risk\.adapters\.receiver|evidence)\b)"
)


def warmed_up(memwarden: OperatorProcess, warm: Callable[[], None]) -> Baseline:
    """Run ``warm`` (each kind of request, the largest included) twice: allocator arenas
    and caches grown once are not growth."""
    peak, offset = memwarden.memory()["VmHWM"], memwarden.log_path.stat().st_size
    warm()
    warm()
    return Baseline(rss=memwarden.memory()["VmRSS"], peak=peak, log_offset=offset)


def assert_flat_and_alive(
    memwarden: OperatorProcess, baseline: Baseline, seen: Counter[str]
) -> None:
    """Alive; RSS back within :data:`RSS_BOUND` of the baseline, no request (warm-up
    included) pushed the peak further than that, and none made the servers log an ERROR."""
    assert memwarden.healthy(), memwarden.log_tail()
    with memwarden.log_path.open("rb") as log:
        log.seek(baseline.log_offset)
        lines = log.read().decode(errors="replace").splitlines()
    errors = [line for line in lines if SERVER_LOGGERS.search(line)]
    assert not errors, f"{len(errors)} ERROR lines, the first: {errors[0]}"
    memory = memwarden.memory()
    print(
        f"operator RSS {baseline.rss / 2**20:.1f} -> {memory['VmRSS'] / 2**20:.1f} MiB, peak "
        f"{baseline.peak / 2**20:.1f} -> {memory['VmHWM'] / 2**20:.1f} MiB over {EXAMPLES} "
        f"examples; answers {dict(sorted(seen.items()))}"
    )
    assert memory["VmRSS"] - baseline.rss < RSS_BOUND, (baseline, memory)
    assert memory["VmHWM"] - baseline.peak < RSS_BOUND, (baseline, memory)


def _policy(kube: client.ApiClient, namespace: str, **spec: Any) -> None:
    """The namespace's policy ``checkout``, once the operator has seen it."""
    custom = client.CustomObjectsApi(kube)
    body = make_policy(namespace=namespace, spec=make_policy_spec(memory=PLAIN, **spec))
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "memorypolicies", body)
    wait_policy_indexed(kube, namespace, "checkout")


# --- admission ------------------------------------------------------------------------

REVIEW_PATHS: list[tuple[str | int, ...]] = [
    ("apiVersion",),
    ("kind",),
    ("request",),
    ("request", "uid"),
    ("request", "resource"),
    ("request", "resource", "resource"),
    ("request", "operation"),
    ("request", "userInfo"),
    ("request", "namespace"),
    ("request", "subResource"),
    ("request", "oldObject"),
    ("request", "object"),
    *(("request", "object", *path) for path in POD_PATHS),
]


@st.composite
def admission_requests(draw: st.DrawFn, namespace: str) -> tuple[bytes, bytes, list[Any], bytes]:
    """(method, target, headers, body): mostly POSTs of mutated reviews of a governed pod."""
    kind = draw(st.sampled_from(["review"] * 4 + ["json", "bytes"]))
    if kind == "review":
        review = make_admission_review(
            governed_pod(namespace), uid=draw(st.text(max_size=20)) or "u"
        )
        for path, value in draw(
            st.lists(
                st.tuples(st.sampled_from(REVIEW_PATHS), st.just(DELETE) | GARBAGE_VALUES),
                max_size=4,
            )
        ):
            mutate(review, path, value)
        body = json.dumps(review).encode("utf-8", "surrogatepass")
    elif kind == "json":
        body = json.dumps(draw(JSON)).encode("utf-8", "surrogatepass")
    else:
        body = draw(st.binary(max_size=2048))
    method = draw(st.sampled_from([b"POST"] * 6 + [b"GET", b"PUT", b"HEAD", b"post", b"BREW"]))
    target = draw(
        st.sampled_from([f"/{POD_HANDLER_ID}".encode()] * 6 + [b"/", b"/x", b"*", b"/%00"])
    )
    return method, target, draw(HEADERS), body


def test_admission_webhook_survives_fuzzing(
    memwarden: OperatorProcess, kube: client.ApiClient, namespace: str
) -> None:
    """No 5xx, no hang; a 200 is always an allowed review of the request's uid, and the
    core decided every pod (none admitted as outcome ``error``: the core raised)."""
    _policy(kube, namespace)
    webhook, api = admission_webhook(memwarden), operator_api(memwarden)
    path = f"/{POD_HANDLER_ID}".encode()
    good = json.dumps(make_admission_review(governed_pod(namespace))).encode()
    oversize = b"{" * (MAX_REVIEW_BYTES + 1)

    def garbled(where: tuple[str | int, ...], value: Any) -> bytes:
        """A review of the governed pod with one field replaced."""
        review = make_admission_review(governed_pod(namespace))
        mutate(review, ("request", "object", *where), value)
        return json.dumps(review).encode()

    errors = metric_sum(metrics_page(api), "memwarden_webhook_requests_total", outcome="error")

    def warm() -> None:
        for body, headers in ((good, []), (b"{", []), (oversize, []), (bomb(), GZIPPED)):
            webhook.send(b"POST", path, headers=headers, body=body)

    baseline = warmed_up(memwarden, warm)
    seen: Counter[str] = Counter()

    @fuzz_settings()
    @given(request=admission_requests(namespace), framing=FRAMING)
    @example(
        request=(b"POST", path, [], garbled(("spec", "containers", 0), "app")), framing="length"
    )
    @example(
        request=(b"POST", path, [], garbled(("metadata", "labels", "app"), [1])), framing="length"
    )
    @example(request=(b"POST", path, [], oversize), framing="length")
    @example(request=(b"POST", path, [(b"Expect", b"\xff")], good), framing="length")
    @example(request=(b"GET", path, [(b"Expect", b"\xff")], b""), framing="length")
    @example(request=(b"POST", path, [], b"[" * (MAX_REVIEW_BYTES + 1)), framing="chunked")
    @example(request=(b"POST", path, GZIPPED, bomb()), framing="length")
    @example(request=(b"POST", path, [], b"[" * 100_000 + b"]" * 100_000), framing="length")
    def fuzz(request: tuple[bytes, bytes, list[Any], bytes], framing: Framing) -> None:
        method, target, headers, body = request
        answer = webhook.send(method, target, headers=headers, body=body, framing=framing)
        what = f"{method!r} {target!r} {framing} {headers!r}: {body[:200]!r}"
        check_answer(answer, framing=framing, what=what, seen=seen)
        if answer.status == 200 and method != b"HEAD":
            response = json.loads(answer.body)["response"]
            assert response["allowed"] is True, what
            assert response["uid"] == json.loads(body)["request"]["uid"], what

    fuzz()
    # Distinct large governed pods (60 MiB in all): what the webhook keeps of them (its plan
    # cache) is bounded in bytes, not only in entries.
    for n in range(LARGE_PODS):
        pod = governed_pod(namespace)
        pod["spec"]["containers"][0]["env"].append({"name": "BLOB", "value": f"{n:x}" * 2**17})
        answer = webhook.send(b"POST", path, body=json.dumps(make_admission_review(pod)).encode())
        assert answer.status == 200, answer
    assert_flat_and_alive(memwarden, baseline, seen)
    now = metric_sum(metrics_page(api), "memwarden_webhook_requests_total", outcome="error")
    assert now == errors, f"{now - errors} pods admitted because the core raised: see the log"

    # A well-formed review is still mutated, and so is a pod created through the API server.
    answer = webhook.send(
        b"POST", path, body=good, headers=[(b"Content-Type", b"application/json")]
    )
    assert answer.status == 200
    patch = json.loads(base64.b64decode(json.loads(answer.body)["response"]["patch"]))
    assert any("resources" in op["path"] for op in patch), patch
    created = client.CoreV1Api(kube).create_namespaced_pod(
        namespace, make_pod("after-fuzz", namespace=namespace, labels={"app": "checkout"})
    )
    assert created.spec.containers[0].resources.limits["memory"] == PLAIN["limit"]


# --- the Alertmanager receiver -------------------------------------------------------

TIMESTAMPS = st.one_of(
    st.sampled_from(
        [
            "2026-11-25T18:12:00.123456789Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "99999-01-01T00:00:00Z",
            "2026-13-45T25:61:61Z",
            "yesterday",
            "",
        ]
    ),
    JSON,
)
NUMBERS = st.sampled_from(["0.95", "NaN", "inf", "-1e999", "95%", "%", "1" * 5000, "", " 7 "])


@st.composite
def alerts(draw: st.DrawFn, namespace: str, pod: str) -> dict[str, Any]:
    """An alert as Alertmanager sends one, for the test's pod or garbage, fields mutated."""
    alert = make_alert(
        pod=draw(st.sampled_from([pod, pod, None, "", "x" * 5000]) | st.text(max_size=20)),
        namespace=draw(st.sampled_from([namespace, namespace, None, "kube-system"])),
        container=draw(st.sampled_from([None, "app", "nope", ""])),
        alertname=draw(st.sampled_from(["MemwardenNearLimit", "", "a" * 10_000])),
        status=draw(st.sampled_from(["firing", "firing", "resolved", "pending", ""])),
        value=draw(st.none() | NUMBERS),
    )
    alert["startsAt"] = draw(TIMESTAMPS)
    alert["endsAt"] = draw(TIMESTAMPS)
    alert["labels"].update(
        draw(st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=3))
    )
    alert["annotations"]["threshold"] = draw(NUMBERS)
    for key, value in draw(
        st.lists(
            st.tuples(st.sampled_from(sorted(alert)), st.just(DELETE) | GARBAGE_VALUES), max_size=2
        )
    ):
        mutate(alert, (key,), value)
    return alert


PAYLOAD_KEYS = [
    "version",
    "status",
    "receiver",
    "alerts",
    "truncatedAlerts",
    "groupLabels",
    "commonLabels",
]


@st.composite
def alertmanager_requests(
    draw: st.DrawFn, namespace: str, pod: str, token: str
) -> tuple[bytes, list[Any], bytes]:
    """(method, headers, body): mostly POSTs of payloads with garbage alerts; the right
    token most of the time, else none, a wrong one, another scheme or raw bytes."""
    kind = draw(st.sampled_from(["payload"] * 4 + ["json", "bytes"]))
    if kind == "payload":
        payload = make_payload(draw(st.lists(alerts(namespace, pod), max_size=4)))
        for key, value in draw(
            st.lists(
                st.tuples(st.sampled_from(PAYLOAD_KEYS), st.just(DELETE) | GARBAGE_VALUES),
                max_size=2,
            )
        ):
            mutate(payload, (key,), value)
        body = json.dumps(payload).encode("utf-8", "surrogatepass")
    elif kind == "json":
        body = json.dumps(draw(JSON)).encode("utf-8", "surrogatepass")
    else:
        body = draw(st.binary(max_size=2048))
    right = f"Bearer {token}".encode()
    authorization = draw(
        st.sampled_from(
            [right] * 5 + [None, b"Bearer wrong", f"bearer {token}".encode(), b"Basic eDp5"]
        )
        | JUNK_BEARER
    )
    headers = draw(HEADERS)
    if authorization is not None:
        headers = [(b"Authorization", authorization), *headers]
    method = draw(st.sampled_from([b"POST"] * 6 + [b"GET", b"PUT", b"DELETE"]))
    return method, headers, body


def incident_uids(kube: client.ApiClient) -> set[str]:
    """Every MemoryIncident's UID, in every namespace."""
    listed = client.CustomObjectsApi(kube).list_cluster_custom_object(GROUP, VERSION, PLURAL)
    return {item["metadata"]["uid"] for item in listed["items"]}


def test_alertmanager_receiver_survives_fuzzing(
    memwarden: OperatorProcess, kube: client.ApiClient, namespace: str
) -> None:
    """No 5xx, no hang; no incident opens for the pod, whose policy did not opt in."""
    _policy(kube, namespace)
    create_running_pod(kube, namespace, "checkout-1", labels={"app": "checkout"})
    api = operator_api(memwarden)
    path = api.alertmanager_path.encode()
    auth = [(b"Authorization", f"Bearer {memwarden.alertmanager_token}".encode())]
    valid = json.dumps(make_payload([make_alert(pod="checkout-1", namespace=namespace)])).encode()
    before = incident_uids(kube)

    def warm() -> None:
        for body, headers in ((valid, []), (b"{", []), (b"x" * 2**20, []), (bomb(), GZIPPED)):
            api.client.send(b"POST", path, headers=[*auth, *headers], body=body)

    baseline = warmed_up(memwarden, warm)
    seen: Counter[str] = Counter()
    deep = b'{"version": "4", "alerts": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"

    @fuzz_settings()
    @given(
        request=alertmanager_requests(namespace, "checkout-1", memwarden.alertmanager_token),
        framing=FRAMING,
    )
    @example(
        request=(b"POST", auth, b'{"version": "4", "n": ' + b"1" * 5000 + b"}"), framing="length"
    )
    @example(request=(b"POST", [(b"Authorization", b"Bearer \xff\xfe")], valid), framing="length")
    @example(request=(b"POST", [*auth, (b"Expect", b"\xff")], valid), framing="length")
    @example(request=(b"GET", [*auth, (b"Expect", b"\x80")], b""), framing="length")
    @example(request=(b"POST", auth, deep), framing="length")
    @example(request=(b"POST", auth, b" " * (2**20 + 1)), framing="chunked")
    @example(request=(b"POST", [*auth, *GZIPPED], bomb()), framing="length")
    def fuzz(request: tuple[bytes, list[Any], bytes], framing: Framing) -> None:
        method, headers, body = request
        answer = api.client.send(method, path, headers=headers, body=body, framing=framing)
        what = f"{method!r} {framing} {headers!r}: {body[:200]!r}"
        check_answer(answer, framing=framing, what=what, seen=seen)

    fuzz()
    assert_flat_and_alive(memwarden, baseline, seen)

    # A valid push is still accepted (and, the policy not having opted in, opens nothing).
    metrics_before = suppressed_counts(metrics_page(api))
    answer = api.client.send(b"POST", path, headers=auth, body=valid)
    assert answer.status == 200, answer
    assert json.loads(answer.body)["accepted"] == 1
    wait_for(
        lambda: (
            suppressed_counts(metrics_page(api)).get("alerts not accepted", 0)
            > metrics_before.get("alerts not accepted", 0)
        ),
        timeout=30,
        what="the valid alert counted as not accepted",
    )
    assert incident_uids(kube) - before == set(), "the fuzzing opened incidents"


def metrics_page(api: OperatorApi) -> str:
    answer = api.client.send(b"GET", api.metrics_path.encode())
    assert answer.status == 200
    return str(answer.body.decode())


# --- the evidence API ----------------------------------------------------------------

SEGMENTS = [
    "..",
    "%2e%2e",
    "%2E%2E",
    ".",
    "%2f",
    "..%2f..",
    "%2e%2e%2f%2e%2e%2fetc",
    "%00",
    "%ff",
    "",
    "x" * 5000,
    "etc",
    "passwd",
    "bundle",
    "incidents",
    "namespaces",
    "v1",
    "meta.json",
    BUNDLE_FILE,
]


@st.composite
def evidence_requests(
    draw: st.DrawFn, *, prefix: str, namespace: str, incident: str, tokens: list[str]
) -> tuple[bytes, bytes, list[Any], bytes]:
    """(method, target, headers, body) around the real routes, with traversal attempts."""
    real = [
        f"{prefix}/v1/namespaces/{namespace}/incidents",
        f"{prefix}/v1/namespaces/{namespace}/incidents/{incident}",
        f"{prefix}/v1/namespaces/{namespace}/incidents/{incident}/bundle",
    ]
    segment = st.sampled_from([namespace, incident, *SEGMENTS]) | st.text(max_size=12).map(
        lambda text: quote(text, safe="")
    )
    kind = draw(st.sampled_from(["real"] * 3 + ["spliced"] * 3 + ["raw"]))
    if kind == "real":
        target = draw(st.sampled_from(real)).encode()
    elif kind == "spliced":
        parts = draw(st.sampled_from(real)).split("/")
        for _ in range(draw(st.integers(1, 3))):
            parts.insert(draw(st.integers(2, len(parts))), draw(segment))
        target = "/".join(parts).encode()
    else:
        raw = draw(rarely(_PRINTABLE, _NO_BREAKS))
        target = prefix.encode() + b"/" + raw.replace(b" ", b"%20")
    if draw(st.booleans()):
        target += b"?" + draw(rarely(_PRINTABLE, _NO_BREAKS)).replace(b" ", b"+")
    token = draw(st.sampled_from([*tokens, *tokens, "junk"]) | st.text(max_size=40))
    authorization = draw(
        st.sampled_from([f"Bearer {token}".encode(), None, b"Basic eDp5", b"Bearer"]) | JUNK_BEARER
    )
    headers = draw(HEADERS)
    if authorization is not None:
        headers = [(b"Authorization", authorization), *headers]
    body = draw(
        st.sampled_from([b"", b"\x1f\x8b", make_bundle()])
        | st.binary(max_size=4096).map(lambda b: b"\x1f\x8b" + b)
        | st.binary(max_size=1024)
    )
    method = draw(
        st.sampled_from([b"GET"] * 3 + [b"PUT"] * 3 + [b"POST", b"DELETE", b"HEAD", b"PATCH"])
    )
    return method, target, headers, body


def tree(root: Path) -> set[Path]:
    return {path.relative_to(root) for path in root.rglob("*")}


def test_evidence_api_survives_fuzzing(
    memwarden: OperatorProcess, kube: client.ApiClient, namespace: str
) -> None:
    """No 5xx, no hang; nothing written outside the incident's own directory of the store
    (no partial upload left in it), and every 2xx read is the namespace's listing, its
    incident's meta or its bundle."""
    _policy(kube, namespace, capture={"artifacts": ["heap"]})
    create_running_pod(
        kube, namespace, "checkout-1", labels={"app": "checkout"}, pod_ip="127.0.0.1"
    )
    incident = "fuzzed"
    client.CustomObjectsApi(kube).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, make_incident(incident, pod="checkout-1")
    )

    def upload_token() -> str | None:
        pod = client.CoreV1Api(kube).read_namespaced_pod("checkout-1", namespace)
        for container in pod.spec.ephemeral_containers or []:
            for env in container.env or []:
                if env.name == ENV_UPLOAD_TOKEN:
                    return str(env.value)
        return None

    token = wait_for(upload_token, timeout=60, what="the debug container and its upload token")
    reader = evidence_reader_token(kube, namespace)
    api = operator_api(memwarden)
    prefix = api.evidence_path
    listing = f"{prefix}/v1/namespaces/{namespace}/incidents".encode()
    read = [(b"Authorization", f"Bearer {reader}".encode())]
    bundle_url = f"{listing.decode()}/{incident}/bundle".encode()
    up = [(b"Authorization", f"Bearer {token}".encode())]
    workdir = memwarden.workdir
    store = workdir / "evidence"
    outside_before = tree(workdir) - {p for p in tree(workdir) if p.parts[:1] == ("evidence",)}
    stored_before = tree(store) if store.exists() else set()  # other tests' bundles

    def warm() -> None:
        for target, headers in ((listing, read), (listing, []), (listing + b"/x/bundle", read)):
            api.client.send(b"GET", target, headers=headers)
        api.client.send(b"PUT", bundle_url, headers=[*up, *GZIPPED], body=bomb())

    baseline = warmed_up(memwarden, warm)
    seen: Counter[str] = Counter()

    @fuzz_settings()
    @given(
        request=evidence_requests(
            prefix=prefix, namespace=namespace, incident=incident, tokens=[reader, token]
        ),
        framing=FRAMING,
    )
    @example(
        request=(b"GET", listing, [(b"Authorization", b"Bearer \xff\xfe")], b""), framing="length"
    )
    @example(request=(b"PUT", bundle_url, up, b"\x1f\x8b" + b"\0" * (2 * 2**20)), framing="long")
    @example(request=(b"PUT", bundle_url, up, b"PK\x03\x04"), framing="chunked")
    @example(request=(b"PUT", bundle_url, [*up, (b"Expect", b"\xff")], b"\x1f"), framing="length")
    @example(
        request=(b"GET", prefix.encode() + b"/nowhere", [(b"Expect", b"\x80")], b""),
        framing="length",
    )
    @example(
        request=(b"GET", listing.replace(namespace.encode(), b"..%2f.."), read, b""),
        framing="length",
    )
    def fuzz(request: tuple[bytes, bytes, list[Any], bytes], framing: Framing) -> None:
        method, target, headers, body = request
        answer = api.client.send(method, target, headers=headers, body=body, framing=framing)
        what = f"{method!r} {target[:300]!r} {framing} {headers!r}: {body[:100]!r}"
        check_answer(answer, framing=framing, what=what, seen=seen)
        if answer.status is not None and 200 <= answer.status < 300 and method == b"GET":
            stored = store / namespace / incident / BUNDLE_FILE
            if answer.headers.get("Content-Type", "").startswith("application/json"):
                assert json.loads(answer.body)["namespace"] == namespace, what
            else:  # the bundle, or a range of it
                assert answer.body in stored.read_bytes(), what

    fuzz()
    assert_flat_and_alive(memwarden, baseline, seen)

    outside_after = tree(workdir) - {p for p in tree(workdir) if p.parts[:1] == ("evidence",)}
    assert outside_after == outside_before
    for path in tree(store) - stored_before:
        assert path.parts[0] == namespace, path  # nothing for another namespace, or above
        assert len(path.parts) == 1 or path.parts[1] == incident, path
        assert not (store / path).is_symlink(), path
        assert not path.name.startswith(".upload-"), f"a refused upload left {path}"

    # The incident's own upload still lands (unless a generated one already did), and an
    # authorised user still lists it.
    answer = api.client.send(b"PUT", bundle_url, headers=up, body=make_bundle())
    assert answer.status in (201, 409), answer
    answer = api.client.send(b"GET", listing, headers=read)
    assert answer.status == 200, answer
    assert [item["name"] for item in json.loads(answer.body)["items"]] == [incident]

    def phase() -> str | None:
        obj = client.CustomObjectsApi(kube).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, incident
        )
        found = (obj.get("status") or {}).get("phase")
        return found if found != "Capturing" else None

    # The bundle completes the incident, which then holds no capture slot of the cluster's.
    assert wait_for(phase, timeout=60, what="the incident completed") == "Collected"
