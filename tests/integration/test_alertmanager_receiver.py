"""Alertmanager -> the operator's receiver -> MemoryIncidents, on real servers.

- A Prometheus alerting rule fires on a test-exporter series for a pod that exists in
  the API; a real Alertmanager routes it to the operator's receiver; one incident opens.
- An alert storm posted straight to the receiver opens no more incidents than the
  policy's budget allows, and admission (dry-run pod creations through the API server
  and the webhook) stays within 2x its idle latency meanwhile.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from memwarden.api import APPLIED_ANNOTATION
from memwarden.risk.adapters import receiver
from memwarden_testing.alertmanager import (
    AlertmanagerProcess,
    make_alert,
    make_payload,
    suppressed_counts,
)
from memwarden_testing.builders import make_container, make_policy, make_policy_spec
from memwarden_testing.cluster import REPO, kubectl, wait_for
from memwarden_testing.operator import OperatorProcess
from memwarden_testing.prometheus import ContainerSeries, PrometheusServer, SeriesExporter, flat
from memwarden_testing.storm import StormProcess

GI = 2**30
PLAIN = {"request": "512Mi", "limit": "1Gi"}
#: Policies accept Alertmanager pushes only when they say so.
ACCEPTS_ALERTS = {"alerts": True}
ALERT = "MemwardenNearMemoryLimit"
PROMTOOL = Path("/usr/bin/promtool")
AMTOOL = Path("/usr/bin/amtool")


# --- helpers ----------------------------------------------------------------------------


def apply(kubeconfig: Path, obj: dict[str, Any]) -> None:
    kubectl(kubeconfig, "apply", "-f", "-", input=yaml.safe_dump(obj))


def incidents(kube: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    listed = client.CustomObjectsApi(kube).list_namespaced_custom_object(
        "memwarden.dev", "v1alpha1", namespace, "memoryincidents"
    )
    items: list[dict[str, Any]] = listed["items"]
    return items


def create_pods(kube: client.ApiClient, namespace: str, names: list[str]) -> None:
    core = client.CoreV1Api(kube)
    for name in names:
        core.create_namespaced_pod(
            namespace,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": "checkout"}},
                "spec": {"containers": [make_container("app")]},
            },
        )


def wait_pods_governed(kube: client.ApiClient, namespace: str, count: int) -> None:
    """The operator's indexes hold the policy and the pods once status counts them."""

    def matched() -> bool:
        policy = client.CustomObjectsApi(kube).get_namespaced_custom_object(
            "memwarden.dev", "v1alpha1", namespace, "memorypolicies", "checkout"
        )
        return bool((policy.get("status") or {}).get("matchedPods") == count)

    wait_for(matched, timeout=30, what=f"{count} pods matched by the policy")


def scrape(operator: OperatorProcess) -> str:
    """The operator's /metrics page, over its HTTPS API."""
    url = f"{operator.http_url}/metrics"
    with urllib.request.urlopen(url, timeout=5, context=operator.tls_context()) as response:
        text: str = response.read().decode()
    return text


def never_more_than(count_now: Callable[[], int], limit: int, *, seconds: float) -> int:
    """Poll a count until a deadline ``seconds`` away; fail as soon as it exceeds ``limit``."""
    deadline = time.monotonic() + seconds
    count = count_now()
    while time.monotonic() < deadline:
        count = count_now()
        assert count <= limit, f"{count} > {limit}"
        time.sleep(0.25)
    return int(count)


# --- Prometheus rule -> Alertmanager -> receiver ----------------------------------------

DOC = REPO / "docs" / "alerting.md"


def documented_yaml() -> list[dict[str, Any]]:
    """The YAML examples of docs/alerting.md, in order (PrometheusRule, Alertmanager)."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)
    return [yaml.safe_load(block) for block in blocks]


def documented_rule() -> dict[str, Any]:
    rule: dict[str, Any] = documented_yaml()[0]["spec"]["groups"][0]["rules"][0]
    return rule


def test_documented_rule_and_alertmanager_config_are_valid(tmp_path: Path) -> None:
    assert PROMTOOL.exists() and AMTOOL.exists(), "promtool/amtool missing: run hack/bootstrap.sh"
    prometheus_rule, alertmanager = documented_yaml()[:2]
    assert documented_rule()["alert"] == ALERT
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": prometheus_rule["spec"]["groups"]}))
    checked = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(rules)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # amtool opens the files the config names: point them at a stand-in.
    (tmp_path / "token").write_text("x")
    webhook = alertmanager["receivers"][1]["webhook_configs"][0]
    assert webhook["url"].endswith(receiver.PREFIX + receiver.ROUTE)
    webhook["http_config"]["authorization"]["credentials_file"] = str(tmp_path / "token")
    webhook["http_config"]["tls_config"]["ca_file"] = str(tmp_path / "token")
    config = tmp_path / "alertmanager.yml"
    config.write_text(yaml.safe_dump(alertmanager))
    checked = subprocess.run(
        [str(AMTOOL), "check-config", str(config)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.fixture
def alerting_stack(
    memwarden: OperatorProcess,
    series_exporter: SeriesExporter,
    namespace: str,
    tmp_path: Path,
) -> Iterator[tuple[PrometheusServer, AlertmanagerProcess]]:
    """Alertmanager routing to the operator, and a Prometheus of the shared testing
    module with one alerting rule scoped to the test's namespace, sending to it."""
    alertmanager = AlertmanagerProcess(
        workdir=tmp_path,
        receiver_url=memwarden.alertmanager_url,
        token_file=memwarden.alertmanager_token_file,
        ca_file=memwarden.ca_file,
    )
    alertmanager.start()
    rule = {**documented_rule(), "for": "2s"}  # the documented rule, with a test's "for"
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "memwarden-test", "rules": [rule]}]}))
    prometheus = PrometheusServer(
        workdir=tmp_path / "prometheus",
        targets=[series_exporter.target],
        rule_files=[rules],
        alertmanagers=[f"127.0.0.1:{alertmanager.port}"],
    )
    prometheus.start()
    try:
        yield prometheus, alertmanager
    finally:
        prometheus.stop()
        alertmanager.stop()
        series_exporter.remove_namespace(namespace)


def test_prometheus_rule_fires_alertmanager_routes_it_and_one_incident_opens(
    memwarden: OperatorProcess,
    kube: client.ApiClient,
    namespace: str,
    series_exporter: SeriesExporter,
    alerting_stack: tuple[PrometheusServer, AlertmanagerProcess],
) -> None:
    prometheus, alertmanager = alerting_stack
    spec = make_policy_spec(memory=PLAIN, oomRisk=ACCEPTS_ALERTS)
    apply(memwarden.kubeconfig, make_policy(namespace=namespace, spec=spec))
    create_pods(kube, namespace, ["checkout-1", "checkout-2"])
    wait_pods_governed(kube, namespace, 2)

    series_exporter.set_many(
        [
            ContainerSeries(
                namespace, "checkout-1", "app", working_set=flat(0.95 * GI), limit_bytes=GI
            ),
            ContainerSeries(
                namespace, "checkout-2", "app", working_set=flat(0.5 * GI), limit_bytes=GI
            ),
        ]
    )
    opened = wait_for(
        lambda: incidents(kube, namespace),
        timeout=60,
        interval=0.5,
        what=f"an incident (alertmanager log: {alertmanager.log_tail(500)})",
    )
    assert len(opened) == 1
    spec = opened[0]["spec"]
    assert spec["pod"] == "checkout-1"
    assert spec["container"] == "app"
    assert spec["policy"] == "checkout"
    trigger = spec["trigger"]
    assert trigger["source"] == "alertmanager"
    assert trigger["signal"] == trigger["alertName"] == ALERT
    assert trigger["value"] == pytest.approx(0.95, abs=0.01)
    assert trigger["threshold"] == 0.9
    assert trigger["labels"]["memwarden"] == "capture"
    # The alert stays firing and Alertmanager notifies again on changes: still one.
    assert never_more_than(lambda: len(incidents(kube, namespace)), 1, seconds=4) == 1
    firing = prometheus.query(f'ALERTS{{alertname="{ALERT}",alertstate="firing"}}')
    assert [a["metric"]["pod"] for a in firing if a["metric"]["namespace"] == namespace] == [
        "checkout-1"
    ]
    assert any(a["labels"].get("pod") == "checkout-1" for a in alertmanager.alerts())


# --- alert labels choose no victim (issue 12 item 2) -----------------------------------


def push(memwarden: OperatorProcess, alerts: list[dict[str, Any]]) -> dict[str, Any]:
    """POST one notification to the operator's receiver, as Alertmanager does."""
    request = urllib.request.Request(
        memwarden.alertmanager_url,
        data=json.dumps(make_payload(alerts)).encode(),
        headers={
            "Authorization": f"Bearer {memwarden.alertmanager_token}",
            "Content-Type": "application/json",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10, context=memwarden.tls_context()) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


@pytest.mark.parametrize(
    ("oom_risk", "labels", "reason"),
    [
        pytest.param({}, {}, "alerts not accepted", id="policy-did-not-opt-in"),
        pytest.param(
            ACCEPTS_ALERTS,
            {"exported_namespace": "kube-system"},
            "namespace mismatch",
            id="labels-name-another-namespace",
        ),
    ],
)
def test_an_alert_opens_nothing_unless_the_pods_policy_accepts_it(
    memwarden: OperatorProcess,
    kube: client.ApiClient,
    namespace: str,
    oom_risk: dict[str, Any],
    labels: dict[str, str],
    reason: str,
) -> None:
    policy = make_policy(namespace=namespace, spec=make_policy_spec(memory=PLAIN, oomRisk=oom_risk))
    apply(memwarden.kubeconfig, policy)
    create_pods(kube, namespace, ["checkout-1"])
    wait_pods_governed(kube, namespace, 1)
    before = suppressed_counts(scrape(memwarden)).get(reason, 0)

    alert = make_alert(pod="checkout-1", namespace=namespace, value="0.95")
    alert["labels"].update(labels)
    assert push(memwarden, [alert])["accepted"] == 1
    wait_for(
        lambda: suppressed_counts(scrape(memwarden)).get(reason, 0) > before,
        timeout=30,
        what=f"the alert counted as suppressed ({reason})",
    )
    assert never_more_than(lambda: len(incidents(kube, namespace)), 0, seconds=3) == 0

    # The same pod, once its policy accepts alerts and the labels agree, gets its incident.
    policy["spec"]["oomRisk"] = ACCEPTS_ALERTS
    apply(memwarden.kubeconfig, policy)
    clean = make_alert(pod="checkout-1", namespace=namespace, value="0.95")
    opened = wait_for(
        lambda: push(memwarden, [clean]) and incidents(kube, namespace),
        timeout=30,
        interval=1,
        what="an incident once the policy accepts alerts",
    )
    assert [i["spec"]["pod"] for i in opened] == ["checkout-1"]


# --- alert storm ------------------------------------------------------------------------

STORM_ALERTS = 300
STORM_PODS = ["storm-a", "storm-b", "storm-c"]
BUDGET = 2
IDLE_SAMPLES = 30
SENDERS = 4
#: Seconds between two notifications of one sender: 100 notifications in about 3 s.
PACE = 0.12


def dry_run_latency(kube: client.ApiClient, namespace: str) -> float:
    """Seconds for one server-side dry-run pod creation the webhook mutates."""
    core = client.CoreV1Api(kube)
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "probe-", "labels": {"app": "checkout"}},
        "spec": {"containers": [make_container("app")]},
    }
    started = time.perf_counter()
    created = core.create_namespaced_pod(namespace, body, dry_run="All")
    elapsed = time.perf_counter() - started
    assert APPLIED_ANNOTATION in (created.metadata.annotations or {}), "webhook did not mutate"
    return elapsed


def test_alert_storm_opens_at_most_the_budget_and_admission_stays_fast(
    memwarden: OperatorProcess, kube: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    capture = {"cooldown": "30m", "maxIncidentsPerHour": BUDGET}
    spec = make_policy_spec(memory=PLAIN, capture=capture, oomRisk=ACCEPTS_ALERTS)
    policy = make_policy(namespace=namespace, spec=spec)
    apply(memwarden.kubeconfig, policy)
    create_pods(kube, namespace, STORM_PODS)
    wait_pods_governed(kube, namespace, len(STORM_PODS))
    before = suppressed_counts(scrape(memwarden))

    for _ in range(5):  # warm the connections and the webhook's path
        dry_run_latency(kube, namespace)
    idle = [dry_run_latency(kube, namespace) for _ in range(IDLE_SAMPLES)]

    # 100 notifications of 3 alerts (one per pod), paced over ~3 s by 4 senders in a
    # process of their own (as Alertmanager is), while this one measures admission.
    bodies = [
        json.dumps(
            make_payload(
                [make_alert(pod=p, namespace=namespace, value=f"0.9{i % 10}") for p in STORM_PODS]
            )
        ).encode()
        for i in range(STORM_ALERTS // len(STORM_PODS))
    ]
    storm = StormProcess(
        url=memwarden.alertmanager_url,
        token=memwarden.alertmanager_token,
        bodies=bodies,
        senders=SENDERS,
        pace=PACE,
        workdir=tmp_path,
        ca_file=memwarden.ca_file,
    )
    during: list[float] = []
    while storm.running():
        during.append(dry_run_latency(kube, namespace))
    result = storm.result()
    statuses, storm_seconds = result["statuses"], result["seconds"]

    assert statuses == [200] * len(bodies)
    assert storm_seconds < 5, f"the storm took {storm_seconds:.1f}s"
    opened = wait_for(
        lambda: incidents(kube, namespace), timeout=30, interval=0.5, what="incidents"
    )
    count = never_more_than(lambda: len(incidents(kube, namespace)), BUDGET, seconds=3)
    assert 1 <= count <= BUDGET, opened
    assert {i["spec"]["trigger"]["source"] for i in incidents(kube, namespace)} == {"alertmanager"}

    after = suppressed_counts(scrape(memwarden))
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    # Every alert but the ones that opened an incident was counted, with a reason.
    assert sum(delta.values()) >= STORM_ALERTS - count, delta
    assert delta.get("duplicate", 0) > 0
    assert delta.get("budget", 0) + delta.get("concurrency", 0) >= 1, delta

    idle_median, storm_median = statistics.median(idle), statistics.median(during)
    print(
        f"admission dry-run latency: idle median {idle_median * 1000:.1f} ms "
        f"(n={len(idle)}), during storm median {storm_median * 1000:.1f} ms "
        f"(n={len(during)}, p90 {statistics.quantiles(during, n=10)[-1] * 1000:.1f} ms); "
        f"storm {STORM_ALERTS} alerts in {storm_seconds:.2f}s; incidents {count}; "
        f"suppressed {delta}"
    )
    assert len(during) >= 10
    assert storm_median <= 2 * idle_median, (idle_median, storm_median)
