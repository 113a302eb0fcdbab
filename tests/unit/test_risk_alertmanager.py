"""Alertmanager v4 payloads -> findings; the receiver's auth and its answers to garbage."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from memwarden.api import Trigger
from memwarden.risk.adapters.receiver import (
    MAX_BODY_BYTES,
    PREFIX,
    ROUTE,
    Overloaded,
    TokenFile,
    make_alertmanager_app,
)
from memwarden.risk.alertmanager import (
    ANY_CONTAINER,
    PayloadError,
    parse_payload,
)
from memwarden.risk.findings import Finding
from memwarden_testing.alertmanager import make_alert, make_payload, suppressed_counts
from memwarden_testing.rawhttp import RawClient

pytestmark = pytest.mark.unit

TOKEN = "s3cret-token"
URL = PREFIX + ROUTE


# --- parsing ----------------------------------------------------------------------------

PARSE_CASES = [
    pytest.param(
        [make_alert(pod="checkout-1", container="app", value="0.95")],
        [("checkout-1", "app", 0.95)],
        0,
        0,
        id="firing-with-container-and-value",
    ),
    pytest.param(
        [make_alert(pod="checkout-1")],
        [("checkout-1", ANY_CONTAINER, None)],
        0,
        0,
        id="firing-without-container-chosen-later",
    ),
    pytest.param(
        [make_alert(pod="checkout-1", status="resolved")],
        [],
        1,
        0,
        id="resolved-ignored",
    ),
    pytest.param(
        [make_alert(pod=None)],
        [],
        0,
        1,
        id="no-pod-label-unmapped",
    ),
    pytest.param(
        [make_alert(pod="checkout-1", namespace=None)],
        [],
        0,
        1,
        id="no-namespace-label-unmapped",
    ),
    pytest.param(
        [
            make_alert(pod="a", value="93%"),
            make_alert(pod="b", status="resolved"),
            make_alert(pod=None),
            make_alert(pod="c", value="not-a-number"),
        ],
        [("a", ANY_CONTAINER, 0.93), ("c", ANY_CONTAINER, None)],
        1,
        1,
        id="mixed-group-percent-and-junk-value",
    ),
    pytest.param([], [], 0, 0, id="empty-group"),
]


@pytest.mark.parametrize(("alerts", "expected", "resolved", "unmapped"), PARSE_CASES)
def test_payload_to_findings(
    alerts: list[dict[str, Any]],
    expected: list[tuple[str, str, float | None]],
    resolved: int,
    unmapped: int,
) -> None:
    batch = parse_payload(json.dumps(make_payload(alerts)))
    assert [(f.pod, f.container, f.value) for f in batch.findings] == expected
    assert batch.resolved == resolved
    assert len(batch.unmapped) == unmapped
    for finding in batch.findings:
        assert finding.source == "alertmanager"
        assert finding.signal == finding.alert_name == "MemwardenNearLimit"
        assert finding.namespace == "shop"
        assert finding.labels["pod"] == finding.pod


def test_extra_fields_are_ignored_and_annotations_win_over_labels() -> None:
    alert = make_alert(pod="checkout-1", value="0.5")
    alert["annotations"] = {"value": "0.97", "threshold": "0.9", "summary": "near the limit"}
    alert["futureField"] = {"nested": True}
    payload = {**make_payload([alert]), "somethingNew": 1}
    (finding,) = parse_payload(json.dumps(payload)).findings
    assert finding == Finding(
        namespace="shop",
        pod="checkout-1",
        container=ANY_CONTAINER,
        source="alertmanager",
        signal="MemwardenNearLimit",
        value=0.97,
        threshold=0.9,
        alert_name="MemwardenNearLimit",
        labels=alert["labels"],
    )


def test_a_long_alertname_is_cut_to_what_an_incident_accepts() -> None:
    (finding,) = parse_payload(
        json.dumps(make_payload([make_alert(pod="a", alertname="A" * 5000)]))
    ).findings
    Trigger(source="alertmanager", signal=finding.signal, alertName=finding.alert_name)
    assert finding.alert_name == "A" * 256


def test_truncated_alerts_are_reported() -> None:
    payload = {**make_payload([make_alert(pod="a")]), "truncatedAlerts": 7}
    assert parse_payload(json.dumps(payload)).truncated == 7


GARBAGE = [
    pytest.param(b"{not json", "not JSON", id="not-json"),
    pytest.param(b"\xff\xfe\x00", "not JSON", id="not-utf8"),
    pytest.param(b"[1, 2]", "JSON list", id="json-list"),
    pytest.param(b"null", "NoneType", id="json-null"),
    pytest.param(json.dumps({**make_payload([]), "version": "3"}).encode(), "version", id="v3"),
    pytest.param(json.dumps({**make_payload([]), "version": 4}).encode(), "version", id="v4-int"),
    pytest.param(
        json.dumps({**make_payload([]), "alerts": {"a": 1}}).encode(), "alerts", id="alerts-dict"
    ),
    pytest.param(
        json.dumps({**make_payload([]), "alerts": [{"status": "firing"}]}).encode(),
        "alerts.0.labels",
        id="alert-without-labels",
    ),
    pytest.param(
        json.dumps(make_payload([{**make_alert(pod="a"), "labels": {"pod": 3}}])).encode(),
        "alerts.0.labels.pod",
        id="label-not-a-string",
    ),
    pytest.param(
        json.dumps(make_payload([make_alert(pod="a", status="pending")])).encode(),
        "alerts.0.status",
        id="unknown-status",
    ),
    pytest.param(
        json.dumps({k: v for k, v in make_payload([]).items() if k != "receiver"}).encode(),
        "receiver",
        id="missing-receiver",
    ),
    pytest.param(b"[" * 100_000, "nested too deeply", id="deeply-nested"),
    pytest.param(
        b'{"version": "4", "n": ' + b"1" * 5000 + b"}", "not JSON we accept", id="huge-integer"
    ),
]


@pytest.mark.parametrize(("body", "says"), GARBAGE)
def test_garbage_payload_is_refused_with_a_reason(body: bytes, says: str) -> None:
    with pytest.raises(PayloadError, match=says):
        parse_payload(body)


# --- the receiver -----------------------------------------------------------------------


class Sink:
    """``on_findings`` for tests: records what it is handed."""

    def __init__(self, *, fail: bool = False) -> None:
        self.received: list[Finding] = []
        self.fail = fail

    async def __call__(self, findings: Sequence[Finding]) -> None:
        if self.fail:
            raise Overloaded("queue full")
        self.received.extend(findings)


def serve(
    test: Callable[[TestClient[web.Request, web.Application]], Awaitable[None]],
    *,
    app: web.Application,
) -> None:
    """Run ``test`` against ``app`` mounted as the operator mounts it."""

    async def main() -> None:
        root = web.Application()
        root.add_subapp(PREFIX, app)
        async with TestClient(TestServer(root)) as client:
            await test(client)

    asyncio.run(main())


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.local
def test_receiver_hands_findings_over_and_answers_200() -> None:
    sink = Sink()
    payload = make_payload([make_alert(pod="a"), make_alert(pod="b", status="resolved")])

    async def check(client: TestClient[web.Request, web.Application]) -> None:
        response = await client.post(URL, json=payload, headers=auth())
        assert response.status == 200
        assert await response.json() == {"accepted": 1, "resolved": 1, "unmapped": 0}

    serve(check, app=make_alertmanager_app(token=TOKEN, on_findings=sink))
    assert [f.pod for f in sink.received] == ["a"]


AUTH_CASES = [
    pytest.param({}, id="missing-header"),
    pytest.param(auth("wrong"), id="wrong-token"),
    pytest.param(auth(TOKEN + "x"), id="token-with-suffix"),
    pytest.param({"Authorization": f"Basic {TOKEN}"}, id="wrong-scheme"),
    pytest.param({"Authorization": "Bearer "}, id="empty-token"),
]


@pytest.mark.local
@pytest.mark.parametrize("headers", AUTH_CASES)
def test_receiver_refuses_without_the_token(
    headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    sink = Sink()

    async def check(client: TestClient[web.Request, web.Application]) -> None:
        response = await client.post(URL, json=make_payload([make_alert(pod="a")]), headers=headers)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "token" in (await response.json())["error"]

    with caplog.at_level(logging.WARNING):
        serve(check, app=make_alertmanager_app(token=TOKEN, on_findings=sink))
    assert sink.received == []
    assert "unauthorized" in caplog.text


@pytest.mark.local
def test_receiver_refuses_a_token_that_is_not_utf8() -> None:
    """Header bytes that are not UTF-8 reach the handler as surrogate escapes: a 401, as
    for any wrong token (a 500 before: encoding them for the comparison raised)."""
    sink = Sink()
    body = json.dumps(make_payload([make_alert(pod="a")])).encode()

    async def check(client: TestClient[web.Request, web.Application]) -> None:
        raw = RawClient("127.0.0.1", client.port)
        for token in (b"\xff\xfe", TOKEN.encode() + b"\x80"):
            headers = [(b"Authorization", b"Bearer " + token)]
            answer = await asyncio.to_thread(
                raw.send, b"POST", URL.encode(), headers=headers, body=body
            )
            assert answer.status == 401, answer

    serve(check, app=make_alertmanager_app(token=TOKEN, on_findings=sink))
    assert sink.received == []


@pytest.mark.local
def test_an_empty_configured_token_authorises_nothing() -> None:
    async def check(client: TestClient[web.Request, web.Application]) -> None:
        response = await client.post(URL, json=make_payload([]), headers=auth(""))
        assert response.status == 401

    serve(check, app=make_alertmanager_app(token="", on_findings=Sink()))


@pytest.mark.local
def test_token_file_is_reread_when_rotated_and_missing_file_is_503(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first\n")
    tokens = TokenFile(path)

    async def check(client: TestClient[web.Request, web.Application]) -> None:
        assert (await client.post(URL, json=make_payload([]), headers=auth("first"))).status == 200
        path.write_text("second")
        # mtime resolution may hide a quick rewrite: make the change visible.
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        assert (await client.post(URL, json=make_payload([]), headers=auth("first"))).status == 401
        assert (await client.post(URL, json=make_payload([]), headers=auth("second"))).status == 200
        path.unlink()
        response = await client.post(URL, json=make_payload([]), headers=auth("second"))
        assert response.status == 503

    serve(check, app=make_alertmanager_app(token=tokens, on_findings=Sink()))


REQUEST_GARBAGE = [
    pytest.param(b"not json at all", 400, id="not-json"),
    pytest.param(b"[]", 400, id="json-list"),
    pytest.param(json.dumps({**make_payload([]), "version": "3"}).encode(), 400, id="version-3"),
    pytest.param(
        json.dumps({**make_payload([]), "alerts": "many"}).encode(), 400, id="alerts-not-a-list"
    ),
    pytest.param(b"", 400, id="empty-body"),
    pytest.param(b" " * (MAX_BODY_BYTES + 1), 413, id="huge-body"),
]


@pytest.mark.local
@pytest.mark.parametrize(("body", "status"), REQUEST_GARBAGE)
@pytest.mark.parametrize(
    "chunked", [pytest.param(False, id="sized"), pytest.param(True, id="chunked")]
)
def test_receiver_answers_garbage_with_4xx_json_and_a_log_line(
    body: bytes, status: int, chunked: bool, caplog: pytest.LogCaptureFixture
) -> None:
    sink = Sink()

    async def chunks() -> Any:
        for start in range(0, len(body), 256 * 1024):
            yield body[start : start + 256 * 1024]

    async def check(client: TestClient[web.Request, web.Application]) -> None:
        data: Any = chunks() if chunked else body
        response = await client.post(URL, data=data, headers=auth())
        assert response.status == status
        assert "error" in await response.json()
        # The server is still up and well after the garbage.
        again = await client.post(URL, json=make_payload([make_alert(pod="a")]), headers=auth())
        assert again.status == 200

    with caplog.at_level(logging.WARNING):
        serve(check, app=make_alertmanager_app(token=TOKEN, on_findings=sink))
    assert "alertmanager receiver" in caplog.text
    assert [f.pod for f in sink.received] == ["a"]


@pytest.mark.local
def test_receiver_answers_503_when_the_queue_is_full() -> None:
    async def check(client: TestClient[web.Request, web.Application]) -> None:
        response = await client.post(URL, json=make_payload([make_alert(pod="a")]), headers=auth())
        assert response.status == 503
        assert response.headers["Retry-After"]

    serve(check, app=make_alertmanager_app(token=TOKEN, on_findings=Sink(fail=True)))


@pytest.mark.local
def test_unmapped_alerts_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def check(client: TestClient[web.Request, web.Application]) -> None:
        payload = make_payload([make_alert(pod=None, alertname="NodeDown")])
        response = await client.post(URL, json=payload, headers=auth())
        assert await response.json() == {"accepted": 0, "resolved": 0, "unmapped": 1}

    with caplog.at_level(logging.WARNING):
        serve(check, app=make_alertmanager_app(token=TOKEN, on_findings=Sink()))
    assert "NodeDown" in caplog.text


# --- the operator's app: receiver + /metrics, wired to the intake ----------------------


def test_operator_app_counts_suppressed_triggers_on_metrics() -> None:
    from memwarden.handlers.alerts import AlertIntake
    from memwarden.handlers.http import build_operator_app, metrics_app
    from memwarden.risk.queue import FindingQueue

    async def never_opened(findings: list[Finding], **_: Any) -> None:
        raise AssertionError("this test opens no incident")

    intake = AlertIntake(
        policy_index={}, pod_index={}, open_for_policy=never_opened, queue=FindingQueue(limit=1)
    )
    receiver_app = make_alertmanager_app(
        token=TOKEN, on_findings=intake.submit, on_batch=intake.count_batch
    )
    root = build_operator_app({PREFIX: receiver_app, "/metrics": metrics_app()})

    async def main() -> None:
        async with TestClient(TestServer(root)) as client:
            before = suppressed_counts(await (await client.get("/metrics")).text())
            alerts = [make_alert(pod="a"), make_alert(pod="a"), make_alert(pod=None)]
            first = await client.post(URL, json=make_payload(alerts), headers=auth())
            assert first.status == 200
            # The queue holds one pod: another pod is refused, and asked to retry.
            full = await client.post(URL, json=make_payload([make_alert(pod="b")]), headers=auth())
            assert full.status == 503
            after = suppressed_counts(await (await client.get("/metrics")).text())
        delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
        assert {k: v for k, v in delta.items() if v} == {
            "duplicate": 1.0,
            "unmapped": 1.0,
            "queue full": 1.0,
        }
        assert [f.pod for f in await intake.queue.take()] == ["a"]

    asyncio.run(main())
