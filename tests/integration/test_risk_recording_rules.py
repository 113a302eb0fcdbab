"""memwarden's recording rules in the real Prometheus: they compute what the raw queries
compute, and the risk queries over them find what the raw queries find.

Two engines, both Debian's Prometheus 2.42: ``promtool test rules`` evaluates the rules
over fixed input series at fixed times (exact, deterministic), and the session's
Prometheus evaluates them live over the test exporter's series.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from memwarden.api import OomRiskSpec
from memwarden.risk.adapters.prometheus import PrometheusClient
from memwarden.risk.findings import Finding
from memwarden.risk.promql import Recorded, RecordedNames, gc_cpu_share, policy_queries
from memwarden.risk.rules import MARKER, RuleSet, find_recorded
from memwarden.risk.signals import Governed, evaluate
from memwarden_testing.cluster import wait_for
from memwarden_testing.prometheus import (
    FAST_WINDOWS,
    TEST_RULES,
    ContainerSeries,
    GoRuntime,
    PrometheusServer,
    SeriesExporter,
    flat,
    rising,
)

PROMTOOL = Path(os.environ.get("MEMWARDEN_TEST_PROMTOOL", "/usr/bin/promtool"))
GI = 2**30
MI = 2**20
BY = "max by (namespace, pod, container)"
NAMES = RecordedNames.for_windows(RuleSet().windows)


def promtool_case(expr: str, *, at: str, expected: list[tuple[str, float]]) -> dict[str, object]:
    return {
        "expr": expr,
        "eval_time": at,
        "exp_samples": [{"labels": labels, "value": value} for labels, value in expected],
    }


def test_recorded_series_are_the_raw_expressions_at_each_evaluation(tmp_path: Path) -> None:
    """``promtool test rules`` with the default rule set (5m windows, 10m horizon) over a
    leak with a GC sawtooth, a flat container, a container exported twice and counters.

    The recorded prediction is ``predict_linear`` itself (difference 0, not "close"), and
    ``predict_linear(v, H)`` is the fit at the evaluation time plus ``deriv(v) × H``: the
    identity the operator uses to get the fit back (``predicted - slope × H``).
    """
    if not PROMTOOL.exists():
        pytest.fail(f"{PROMTOOL} is not installed: run hack/bootstrap.sh")
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(RuleSet().document(), sort_keys=False))
    raw = "container_memory_working_set_bytes"
    leak, flat_, twice = (
        f'{{namespace="shop",pod="{pod}",container="app"}}' for pod in ("leak", "flat", "twice")
    )
    # 15 s scrapes; the leak climbs 7 units a scrape, a GC drops it every 8th.
    sawtooth = " ".join(str(1000 + 7 * i - (300 if i % 8 == 7 else 0)) for i in range(60))
    series = [
        {"series": f'{raw}{leak[:-1]},id="a"}}', "values": sawtooth},
        {"series": f'{raw}{flat_[:-1]},id="b"}}', "values": "5000x59"},
        {"series": f'{raw}{twice[:-1]},id="old"}}', "values": "100+3x59"},
        {"series": f'{raw}{twice[:-1]},id="new"}}', "values": "400+1x59"},
        {"series": f'{raw}{{namespace="shop",pod="leak",container="POD"}}', "values": "9x59"},
        {
            "series": 'container_memory_failures_total{namespace="shop",pod="leak",'
            'container="app",failure_type="pgmajfault",scope="container"}',
            "values": "0+300x59",
        },
        {
            "series": 'container_oom_events_total{namespace="shop",pod="leak",container="app"}',
            "values": "0x30 1x29",
        },
        # Go runtime series: the leak's GC takes 90% of 2 cores, its goal near GOMEMLIMIT;
        # the flat one's GC as busy, its goal far from it (no spiral: nothing recorded).
        *(
            {"series": f"{metric}{labels}", "values": values}
            for labels, goal in ((leak, "930x59"), (flat_, "500x59"))
            for metric, values in (
                ("go_cpu_classes_gc_total_cpu_seconds_total", "0+27x59"),
                ("go_cpu_classes_total_cpu_seconds_total", "0+30x59"),
                ("go_gc_heap_goal_bytes", goal),
                ("go_gc_gomemlimit_bytes", "1000x59"),
            )
        ),
    ]
    containers = [leak, flat_, twice]
    # The raw queries' selector: no pod-level or pause series (the leak pod has one).
    ws = 'container_memory_working_set_bytes{container!="",container!="POD"}'
    # A container exported twice (two cgroup ids across a restart) gets its prediction
    # and its slope from different series, in both forms alike: the identities below are
    # about one series.
    one = 'container_memory_working_set_bytes{container!="",container!="POD",pod!="twice"}'
    pl = f"{BY} (predict_linear({ws}[5m], 600))"
    pl_one = f"{BY} (predict_linear({one}[5m], 600))"
    on = "on (namespace, pod, container)"
    cases = []
    for at in ("5m", "10m", "14m45s"):
        cases += [
            promtool_case(
                f"{pl} - {on} {NAMES.predict_linear}",
                at=at,
                expected=[(c, 0.0) for c in containers],
            ),
            promtool_case(
                f"{BY} (deriv({ws}[5m])) - {NAMES.deriv}",
                at=at,
                expected=[(c, 0.0) for c in containers],
            ),
            # predict_linear(v, H) == predict_linear(v, 0) + deriv(v) * H (within 1e-9).
            promtool_case(
                f"abs({pl_one} - {BY} (predict_linear({one}[5m], 0) + deriv({one}[5m]) * 600)) "
                f"< bool 1e-9 * abs({pl_one})",
                at=at,
                expected=[(leak, 1.0), (flat_, 1.0)],
            ),
            # ... so the operator's fit now, from the recorded parts, is the raw fit.
            promtool_case(
                f"abs({BY} (predict_linear({one}[5m], 0)) - {on} ({NAMES.predict_linear} - "
                f"{on} 600 * {NAMES.deriv})) < bool 1e-9 * {BY} (predict_linear({one}[5m], 0))",
                at=at,
                expected=[(leak, 1.0), (flat_, 1.0)],
            ),
            promtool_case(
                f"{BY} (rate(container_memory_failures_total[1m])) - {NAMES.major_faults}",
                at=at,
                expected=[(leak, 0.0)],
            ),
        ]
    marker_labels = "{" + ",".join(f'{k}="{v}"' for k, v in RuleSet().marker_labels().items())
    marker_labels += "}"
    cases += [
        promtool_case(NAMES.major_faults, at="10m", expected=[(NAMES.major_faults + leak, 20.0)]),
        promtool_case(
            f"{BY} (increase(container_oom_events_total[5m])) - {NAMES.oom_events}",
            at="9m",
            expected=[(leak, 0.0)],
        ),
        promtool_case(f"{NAMES.oom_events} > bool 0", at="9m", expected=[(leak, 1.0)]),
        promtool_case(f"{NAMES.oom_events} > 0", at="14m", expected=[]),
        promtool_case(
            f"({gc_cpu_share(namespace=None, containers=None, window='1m')}) "
            f"- on (namespace, pod, container) {NAMES.go_gc_cpu}",
            at="10m",
            expected=[(leak, 0.0)],
        ),
        promtool_case(NAMES.go_gc_cpu, at="10m", expected=[(NAMES.go_gc_cpu + leak, 0.9)]),
        # The marker keeps the time of the group's first evaluation (0 s here).
        promtool_case(MARKER, at="14m", expected=[(MARKER + marker_labels, 0.0)]),
    ]
    test = tmp_path / "test.yml"
    test.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(rules)],
                "evaluation_interval": "15s",
                "tests": [{"interval": "15s", "input_series": series, "promql_expr_test": cases}],
            },
            sort_keys=False,
        )
    )
    result = subprocess.run(
        [str(PROMTOOL), "test", "rules", str(test)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def ns() -> str:
    return f"rules-{uuid.uuid4().hex[:8]}"


def recorded_rules(client: PrometheusClient) -> Recorded | None:
    return find_recorded(client.query(MARKER), windows=FAST_WINDOWS, now=time.time())


def test_the_marker_keeps_the_time_of_the_first_evaluation(prometheus: PrometheusServer) -> None:
    client = PrometheusClient(prometheus.url, timeout=5)
    wait_for(lambda: client.query(MARKER), timeout=20, what="the recording rules' marker")
    (first,) = client.query(MARKER)
    (evaluated,) = client.query(f"timestamp({MARKER})")
    wait_for(  # two evaluations later
        lambda: client.query(f"timestamp({MARKER})")[0].value >= evaluated.value + 2,
        timeout=20,
        what="two more evaluations of the recording rules",
    )
    (again,) = client.query(MARKER)
    assert again.value == first.value <= time.time()
    found = recorded_rules(client)
    assert found is not None and found.horizons == TEST_RULES.horizons
    assert found.windows == TEST_RULES.windows and found.seconds >= 2


def test_recorded_prediction_equals_the_raw_one_at_its_evaluation_times(
    prometheus: PrometheusServer, series_exporter: SeriesExporter, ns: str
) -> None:
    series_exporter.set(ContainerSeries(ns, "leaky", "app", working_set=rising(GI / 2, MI)))
    client = PrometheusClient(prometheus.url, timeout=5)
    names = RecordedNames.for_windows(FAST_WINDOWS)
    recorded = f'{names.predict_linear}{{namespace="{ns}",horizon="10m"}}'
    raw = f'{BY} (predict_linear(container_memory_working_set_bytes{{namespace="{ns}"}}[10s], 600))'

    def evaluations() -> list[list[object]] | None:
        result = prometheus.query(f"{recorded}[6s]")
        return result[0]["values"] if result and len(result[0]["values"]) >= 5 else None

    points = wait_for(evaluations, timeout=30, interval=1, what="five recorded predictions")
    for stamp, value in points:
        at = dt.datetime.fromtimestamp(float(str(stamp)), dt.UTC)
        (sample,) = client.query(raw, time=at)
        assert sample.value == pytest.approx(float(str(value)), rel=1e-9), stamp
    series_exporter.remove_namespace(ns)


RISK = OomRiskSpec.model_validate(
    {
        "usageRatio": 0.9,
        "timeToLimit": "10m",
        "majorFaultsPerSecond": 100,
        "gcCPURatio": 0.5,
        "for": "5s",
    }
)


def test_the_same_findings_with_and_without_recording_rules(
    prometheus: PrometheusServer, series_exporter: SeriesExporter, ns: str
) -> None:
    series_exporter.set_many(
        [
            # 512 MiB to go at 2 MiB/s: about 256 s left, well within 10m; usage 0.5.
            ContainerSeries(ns, "leaky", "app", working_set=rising(GI / 2, 2 * MI)),
            ContainerSeries(ns, "full", "app", working_set=flat(0.95 * GI)),
            ContainerSeries(ns, "steady", "app", working_set=flat(GI / 2)),
            ContainerSeries(
                ns, "faulty", "app", working_set=flat(GI / 4), major_faults_per_second=200
            ),
            ContainerSeries(ns, "killed", "app", working_set=flat(GI / 4)),
            ContainerSeries(
                ns, "spiral", "app", working_set=flat(GI / 4), go=GoRuntime(0.9, 0.93 * GI, GI)
            ),
        ]
    )
    governed = {
        (ns, pod, "app"): Governed(namespace=ns, pod=pod, container="app", limit_bytes=GI)
        for pod in ("leaky", "full", "steady", "faulty", "killed", "spiral")
    }
    client = PrometheusClient(prometheus.url, timeout=5)
    rules = wait_for(
        lambda: (found := recorded_rules(client)) and found.covers(RISK.for_) and found,
        timeout=30,
        what="recording rules older than for",
    )
    raw = policy_queries(RISK, namespace=ns, containers=None, windows=FAST_WINDOWS, min_limit=GI)
    recorded = policy_queries(
        RISK, namespace=ns, containers=None, windows=FAST_WINDOWS, min_limit=GI, recorded=rules
    )
    assert [q.recorded for q in raw] == [False] * 5
    assert [q.recorded for q in recorded] == [True] * 5

    def findings(queries: list, at: dt.datetime) -> dict[tuple[str, str], Finding]:
        results = [(q, client.query(q.expr, time=at)) for q in queries]
        return {(f.pod, f.signal): f for f in evaluate(results, governed=governed, policy="p")}

    expected = {
        ("leaky", "timeToLimit"),
        ("full", "usageRatio"),
        ("faulty", "majorFaultsPerSecond"),
        ("killed", "oomKilled"),
        ("spiral", "gcCPURatio"),
    }
    # The kill once the counter has been scraped at 0: a series that starts at 1 has no
    # increase.
    wait_for(
        lambda: prometheus.query(f'container_oom_events_total{{namespace="{ns}"}} offset 2s'),
        timeout=20,
        what="the OOM counter scraped",
    )
    series_exporter.oom_kill(namespace=ns, pod="killed", container="app")

    def both() -> tuple[dict, dict] | None:
        # One instant for both, a little in the past: the same scrapes for both forms.
        at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2)
        pair = findings(raw, at), findings(recorded, at)
        return pair if set(pair[0]) == set(pair[1]) == expected else None

    without, with_rules = wait_for(both, timeout=60, interval=1, what="the same findings")
    for key, finding in without.items():
        other = with_rules[key]
        assert (other.threshold, other.container) == (finding.threshold, finding.container)
        if key[1] == "timeToLimit":
            # The recorded fit is up to one rule evaluation (1 s) older than the raw one.
            assert other.value == pytest.approx(finding.value, abs=3), key
            assert 200 < finding.value < 300
        elif key[1] in ("majorFaultsPerSecond", "gcCPURatio"):
            # The lowest rate over ``for``: raw at the subquery's steps, recorded at the
            # rule evaluations, of a rate that jitters with the scrapes of a busy machine.
            low, high = (100, 300) if key[1] == "majorFaultsPerSecond" else (0.8, 1.0)
            assert min(finding.value or 0, other.value or 0) >= low, key
            assert max(finding.value or 0, other.value or 0) < high, key
        else:
            assert other.value == pytest.approx(finding.value, rel=0.01), key
    assert math.isclose(without[("full", "usageRatio")].value or 0, 0.95, abs_tol=1e-3)
    series_exporter.remove_namespace(ns)
