"""The one time module: what Kubernetes writes, what a naive or malformed stamp means."""

from __future__ import annotations

import datetime as dt

import pytest

from memwarden.timefmt import parse_time, rfc3339, rfc3339_millis, seconds_since

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 12, 1, 3, 0, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("2026-12-01T02:59:00Z", NOW - dt.timedelta(minutes=1), id="zulu"),
        pytest.param("2026-12-01T04:00:00+01:00", NOW, id="offset"),
        pytest.param("2026-12-01T03:00:00", NOW, id="naive-is-utc"),
        pytest.param("not a time", None, id="malformed"),
        pytest.param("", None, id="empty"),
        pytest.param(None, None, id="absent"),
        pytest.param(17, None, id="not-text"),
    ],
)
def test_parse_time(text: object, expected: dt.datetime | None) -> None:
    assert parse_time(text) == expected


def test_written_forms_read_back() -> None:
    moment = dt.datetime(2026, 12, 1, 4, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert rfc3339(moment) == "2026-12-01T03:00:00Z"
    assert rfc3339_millis(moment) == "2026-12-01T03:00:00.123Z"
    assert parse_time(rfc3339(moment)) == NOW


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("2026-12-01T02:58:30Z", 90.0, id="past"),
        pytest.param("2026-12-01T03:00:30Z", 0.0, id="ahead-counts-zero"),
        pytest.param("garbage", 0.0, id="malformed-counts-zero"),
        pytest.param("2026-12-01T02:58:30", 90.0, id="naive-is-utc"),
    ],
)
def test_seconds_since(text: str, seconds: float) -> None:
    assert seconds_since(text, NOW) == seconds
