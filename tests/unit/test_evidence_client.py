"""``memwarden incidents``: the pure parts (rows, ages, sizes, the table)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from memwarden.commands.incidents import incident_row, render_table
from memwarden.timefmt import format_age
from memwarden_testing.evidence import T0, make_incident


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        pytest.param(-3, "0s", id="clock-skew"),
        pytest.param(45, "45s", id="seconds"),
        pytest.param(119, "119s", id="under-two-minutes"),
        pytest.param(12 * 60, "12m", id="minutes"),
        pytest.param(5 * 3600, "5h", id="hours"),
        pytest.param(3 * 86400, "3d", id="days"),
    ],
)
def test_format_age(seconds: float, expected: str) -> None:
    assert format_age(seconds) == expected


def _collected(name: str, *, namespace: str = "shop") -> dict[str, Any]:
    obj = make_incident(name)
    obj["metadata"].update({"namespace": namespace, "creationTimestamp": "2026-11-25T11:48:00Z"})
    obj["status"] = {
        "phase": "Collected",
        "bundleBytes": 2 * 2**20,
        "analysis": {"top": [{"function": "main.leak", "flatBytes": 1, "cumBytes": 1}]},
    }
    return obj


def test_a_row_of_a_collected_incident() -> None:
    row = incident_row(_collected("checkout-1"), now=T0)
    assert (row.name, row.pod, row.signal, row.phase, row.age, row.bundle, row.top) == (
        "checkout-1", "checkout-1", "usageRatio", "Collected", "12m", "2.00Mi", "main.leak",
    )  # fmt: skip


def test_a_row_of_a_fresh_incident_has_placeholders() -> None:
    row = incident_row({"metadata": {"name": "x"}, "spec": {"pod": "p"}}, now=T0)
    assert (row.phase, row.age, row.bundle, row.top, row.signal) == (
        "Pending", "<unknown>", "<none>", "<none>", "<none>",
    )  # fmt: skip


def test_a_long_function_keeps_its_telling_end() -> None:
    obj = _collected("x")
    obj["status"]["analysis"]["top"][0]["function"] = "example.com/" + "a" * 100 + ".(*T).leak"
    top = incident_row(obj, now=T0).top
    assert top.startswith("…") and top.endswith(".(*T).leak") and len(top) == 60


def test_the_table_aligns_columns_and_adds_namespaces_with_all() -> None:
    rows = [
        incident_row(_collected("a", namespace="shop"), now=T0),
        incident_row(_collected("much-longer-name", namespace="billing"), now=T0),
    ]
    lines = render_table(rows, all_namespaces=True).splitlines()
    assert lines[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert lines[1].index("a ") == lines[0].index("NAME ") == lines[2].index("much-longer-name")
    assert "NAMESPACE" not in render_table(rows, all_namespaces=False)
    assert all(line == line.rstrip() for line in lines)


def test_an_age_uses_the_time_passed_in() -> None:
    later = T0 + dt.timedelta(days=3)
    assert incident_row(_collected("a"), now=later).age == "3d"
