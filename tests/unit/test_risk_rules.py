"""Recording rules: the group (golden), the shipped rules file (drift), finding the rules."""

from __future__ import annotations

import argparse

import pytest
import yaml

from memwarden.cli import build_parser
from memwarden.commands.recording_rules import render
from memwarden.risk.promql import Recorded, Sample, Windows
from memwarden.risk.rules import MARKER, RuleSet, describe, find_recorded
from memwarden_testing.cluster import REPO

pytestmark = pytest.mark.unit

SHIPPED = REPO / "charts" / "memwarden" / "files" / "recording-rules.yaml"
WS = 'container_memory_working_set_bytes{container!="",container!="POD"}'
BY = "max by (namespace, pod, container)"


def go(metric: str) -> str:
    return f'{metric}{{container!="",container!="POD"}}'


def test_the_group_records_each_series_the_recorded_queries_read() -> None:
    group = RuleSet(horizons=("10m", "30m"), interval="30s").group()
    assert (group["name"], group["interval"]) == ("memwarden-risk", "30s")
    marker, *rules = group["rules"]
    labels = {"regression_window": "5m", "rate_window": "1m", "oom_window": "5m"}
    labels |= {"horizons": "10m,30m", "go_gc_cpu": "true"}
    assert marker == {
        "record": MARKER,
        "expr": f'min_over_time({MARKER}{{regression_window="5m",rate_window="1m",'
        'oom_window="5m",horizons="10m,30m",go_gc_cpu="true"}[5m]) or on () vector(time())',
        "labels": labels,
    }
    faults = (
        'container_memory_failures_total{container!="",container!="POD",'
        'failure_type="pgmajfault",scope="container"}'
    )
    psi = 'container_pressure_memory_waiting_seconds_total{container!="",container!="POD"}'
    oom = 'container_oom_events_total{container!="",container!="POD"}'
    ws_name = "memwarden:container_memory_working_set_bytes"
    assert rules == [
        {"record": ws_name, "expr": f"{BY} ({WS})"},
        {"record": f"{ws_name}:deriv5m", "expr": f"{BY} (deriv({WS}[5m]))"},
        {
            "record": f"{ws_name}:predict_linear5m",
            "expr": f"{BY} (predict_linear({WS}[5m], 600))",
            "labels": {"horizon": "10m"},
        },
        {
            "record": f"{ws_name}:predict_linear5m",
            "expr": f"{BY} (predict_linear({WS}[5m], 1800))",
            "labels": {"horizon": "30m"},
        },
        {
            "record": "memwarden:container_memory_major_faults:rate1m",
            "expr": f"{BY} (rate({faults}[1m]))",
        },
        {
            "record": "memwarden:container_pressure_memory_waiting_seconds:rate1m",
            "expr": f"{BY} (rate({psi}[1m]))",
        },
        {
            "record": "memwarden:container_oom_events:increase5m",
            "expr": f"{BY} (increase({oom}[5m]))",
        },
        {
            "record": "memwarden:go_gc_cpu_share_near_gomemlimit:rate1m",
            "expr": f"{BY} (rate({go('go_cpu_classes_gc_total_cpu_seconds_total')}[1m])) / "
            f"{BY} (rate({go('go_cpu_classes_total_cpu_seconds_total')}[1m])) and "
            f"{BY} ({go('go_gc_heap_goal_bytes')}) >= 0.85 * {BY} ({go('go_gc_gomemlimit_bytes')})",
        },
    ]


def test_no_interval_means_prometheus_global_one() -> None:
    assert "interval" not in RuleSet().group()


def test_the_shipped_rules_file_is_the_generated_one() -> None:
    assert SHIPPED.read_text() == render(RuleSet()), (
        "charts/memwarden/files/recording-rules.yaml is stale: run "
        "`memwarden recording-rules --write charts/memwarden/files/recording-rules.yaml`"
    )


def test_the_command_renders_the_windows_it_is_given(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["recording-rules", "--regression-window", "10m", "--horizon", "15m", "--horizon", "1h"]
    args: argparse.Namespace = build_parser(only="recording-rules").parse_args(argv)
    assert args._run(args) == 0
    printed = capsys.readouterr().out
    assert (
        "#   memwarden recording-rules --regression-window 10m --horizon 15m --horizon 1h"
        in printed
    )
    expected = RuleSet(windows=Windows(regression="10m"), horizons=("15m", "1h"))
    assert yaml.safe_load(printed) == expected.document()


def marker(since: float, **labels: str) -> Sample:
    base = {
        "__name__": MARKER,
        "regression_window": "5m",
        "rate_window": "1m",
        "oom_window": "5m",
        "horizons": "10m",
    }
    return Sample(labels={**base, **labels}, value=since)


W = Windows()
NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("markers", "expected"),
    [
        pytest.param([], None, id="no-rules"),
        pytest.param(
            [marker(NOW - 600)],
            Recorded(windows=W, horizons=("10m",), seconds=600),
            id="recorded-for-ten-minutes",
        ),
        pytest.param([marker(NOW - 600, regression_window="10m")], None, id="other-regression"),
        pytest.param([marker(NOW - 600, rate_window="2m")], None, id="other-rate-window"),
        pytest.param([marker(NOW - 600, oom_window="bogus")], None, id="malformed-window"),
        pytest.param(
            [marker(NOW - 60, regression_window="300s", horizons="600s")],
            Recorded(windows=Windows(regression="300s"), horizons=("600s",), seconds=60),
            id="same-windows-other-spelling",
        ),
        pytest.param(
            [marker(NOW - 600, horizons="10m,30m"), marker(NOW - 30, horizons="1h")],
            Recorded(windows=W, horizons=("10m", "30m", "1h"), seconds=30),
            id="two-rule-sets-union-youngest-age",
        ),
        pytest.param(
            [marker(NOW - 600, horizons="")],
            Recorded(windows=W, horizons=(), seconds=600),
            id="no-horizons",
        ),
        pytest.param(
            [marker(NOW - 600, go_gc_cpu="true")],
            Recorded(windows=W, horizons=("10m",), seconds=600, go_gc_cpu=True),
            id="records-the-gc-share",
        ),
        pytest.param(
            [marker(NOW - 600, go_gc_cpu="true"), marker(NOW - 30)],
            Recorded(windows=W, horizons=("10m",), seconds=30, go_gc_cpu=True),
            id="an-older-rule-set-beside-a-newer-one",
        ),
        pytest.param(
            [marker(NOW + 5)],
            Recorded(windows=W, horizons=("10m",), seconds=0),
            id="clock-skew-is-not-negative-age",
        ),
    ],
)
def test_find_recorded(markers: list[Sample], expected: Recorded | None) -> None:
    assert find_recorded(markers, windows=W, now=NOW) == expected


def test_describe_names_every_rule_set() -> None:
    assert describe([]) == "none"
    assert describe([marker(0), marker(0, rate_window="2m", horizons="")]) == (
        "regression 5m, rate 1m, oom 5m, horizons 10m; "
        "regression 5m, rate 2m, oom 5m, horizons none"
    )
