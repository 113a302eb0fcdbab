"""The Helm chart on the real API server; least-privilege RBAC; webhook certificate rotation.

helm is built from its pinned Go module by hack/helm/build.sh (cached after the first run).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import socket
import ssl
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from memwarden import rbac
from memwarden.api import APPLIED_ANNOTATION
from memwarden.capture.plan import ALL_ARTIFACTS, plan_ephemeral_container
from memwarden.evidence.adapters.api import bundle_url
from memwarden.reach import operator_reach_policy
from memwarden.risk.promql import Windows
from memwarden.risk.rules import RuleSet
from memwarden.settings import Settings, flat_env_name, nested_env_name, setting_names
from memwarden.webhook.manifests import (
    incident_admission_policy,
    mutating_webhook_configuration,
    policy_guard,
    service_account_username,
)
from memwarden_testing.builders import make_container, make_policy, make_policy_spec
from memwarden_testing.cluster import (
    REPO,
    acting_as,
    ensure_namespace,
    kubectl,
    unique_name,
    wait_for,
)
from memwarden_testing.operator import OperatorProcess

CHART = REPO / "charts" / "memwarden"
#: Kinds served by CRDs this control plane does not have (cert-manager, Prometheus
#: Operator): rendered and checked here, but not sent to the API server.
FOREIGN_GROUPS = ("cert-manager.io/", "monitoring.coreos.com/")


@pytest.fixture(scope="session")
def helm() -> Path:
    out = subprocess.run(
        ["bash", str(REPO / "hack" / "helm" / "build.sh")],
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def template(
    helm: Path, *, namespace: str, values: dict[str, Any] | None = None, release: str = "memwarden"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), "template", release, str(CHART), "--namespace", namespace, "-f", "-"],
        input=yaml.safe_dump(values or {}),
        capture_output=True,
        text=True,
        timeout=120,
    )


def render(
    helm: Path, *, namespace: str, values: dict[str, Any] | None = None, release: str = "memwarden"
) -> list[dict[str, Any]]:
    result = template(helm, namespace=namespace, values=values, release=release)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def delete_all(kubeconfig: Path, docs: list[dict[str, Any]]) -> None:
    """Delete these (cluster-scoped) objects; those already gone are no error."""
    for doc in docs:
        kubectl(
            kubeconfig, "delete", doc["kind"].lower(), doc["metadata"]["name"], "--ignore-not-found"
        )


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"].get("name"))]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def container_env(docs: list[dict[str, Any]], namespace: str) -> dict[str, str]:
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif item["valueFrom"].get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[item["name"]] = namespace
        elif item["valueFrom"].get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[item["name"]] = POD_NAME
    return env


#: What ``metadata.name`` stands for in ``container_env``.
POD_NAME = "memwarden-7d9f8-abcde"

#: The production shape of docs/ha.md: three replicas, evidence in an S3 bucket.
HIGH_AVAILABILITY = {
    "replicas": 3,
    "evidence": {
        "backend": "s3",
        "s3": {
            "endpoint": "https://s3.storage.svc:8333",
            "bucket": "memwarden-evidence",
            "addressingStyle": "path",
            "credentialsSecret": "memwarden-s3",
            "caSecret": "memwarden-s3-ca",
            "presignDownloadsSeconds": 30,
        },
    },
}

VALUE_SETS = [
    pytest.param({}, id="defaults"),
    pytest.param(
        {
            "webhook": {"certs": {"mode": "certManager"}},
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}},
            "prometheusRule": {"enabled": True},
            "dashboard": {"enabled": True},
            "http": {"tlsSecretName": "memwarden-http-tls"},
        },
        id="cert-manager-and-monitoring",
    ),
    pytest.param(
        {
            "kubelet": {
                "kubernetesMinor": 36,
                "memoryQoS": True,
                "memoryThrottlingFactor": 0.8,
                "memoryReservationPolicy": "TieredReservation",
                "pageSize": 65536,
                "nodeAllocatable": "15Gi",
            },
            "prometheus": {"url": "http://prometheus.monitoring:9090", "intervalSeconds": 30},
            "capture": {"toolboxImage": "registry.example/tools:1", "maxConcurrent": 5},
            "updates": {"evictionsPerMinute": 40, "evictionsPerMinutePerPolicy": 8},
            "webhook": {
                "timeoutSeconds": 5,
                "certs": {"selfSigned": {"validityDays": 30, "renewBeforeDays": 10}},
            },
            "namespaces": {"exclude": ["batch", "ci"]},
            "logLevel": "debug",
            "dryRun": True,
        },
        id="tuned-kubelet-and-capture",
    ),
    pytest.param(
        {
            "replicas": 0,
            "updateStrategy": "RollingUpdate",
            "evidence": {
                "existingClaim": "shared-evidence",
                "maxTotal": "10Gi",
                "namespaceQuota": "2Gi",
            },
            "namespaces": {"watch": ["shop", "payments"]},
            "serviceAccount": {"create": True, "name": "warden"},
            "podDisruptionBudget": {"enabled": False},
            "alertmanager": {"receiver": {"enabled": True, "token": "t" * 32}},
        },
        id="existing-claim-and-watched-namespaces",
    ),
    pytest.param(HIGH_AVAILABILITY, id="high-availability"),
    pytest.param(
        {
            **HIGH_AVAILABILITY,
            "evidence": {
                "backend": "s3",
                "s3": {
                    "bucket": "memwarden-evidence",
                    "webIdentity": {"roleArn": "arn:aws:iam::123456789012:role/memwarden"},
                },
            },
            "antiAffinity": "hard",
        },
        id="web-identity",
    ),
]


#: Together these render every optional branch of the Deployment's environment.
BRANCHES = [
    {},
    {
        "webhook": {"certs": {"mode": "certManager"}},
        "http": {"tlsSecretName": "memwarden-http-tls"},
        "kubelet": {"memoryQoS": True, "memoryThrottlingFactor": 0.9, "nodeAllocatable": "16Gi"},
        "prometheus": {"url": "http://prometheus.monitoring:9090"},
        "evidence": {"maxTotal": "10Gi", "namespaceQuota": "1Gi"},
    },
    {"http": {"insecure": True}},
    {**HIGH_AVAILABILITY, "evidence": {**HIGH_AVAILABILITY["evidence"], "maxTotal": "1Ti"}},
]


def test_every_setting_is_reachable_from_the_chart(helm: Path) -> None:
    """Each field of the settings model is set by the Deployment from a value (or fixed
    by the chart, as paths are): a setting added to settings.py without a chart value
    fails here. extraEnv remains for anything else."""
    rendered: set[str] = set()
    for values in BRANCHES:
        rendered |= set(container_env(render(helm, namespace="ops", values=values), "ops"))
    unreachable = [
        f"{section + '.' if section else ''}{name} ({flat_env_name(section, name)})"
        for section, name, _ in setting_names()
        if not {flat_env_name(section, name), nested_env_name(section, name)} & rendered
    ]
    assert not unreachable, f"settings the chart cannot set: {unreachable}"


def test_values_reach_the_settings_and_extra_env_wins(helm: Path) -> None:
    values = {
        "status": {"debounceSeconds": 5, "resyncSeconds": 60},
        "capture": {"timeoutSeconds": 600, "podWaitSeconds": 30},
        "updates": {"intervalSeconds": 10, "deferredGraceSeconds": 0, "retryMaxSeconds": 60},
        "evidence": {
            "maxBundle": "1Gi",
            "maxAgeSeconds": 86400,
            "tokenAudiences": ["memwarden", "https://kubernetes.default.svc"],
            "uploadSourceCheck": False,
        },
        "webhook": {"host": "::", "backgroundNice": 0},
        "prometheus": {"concurrentNamespaces": 4},
        "dryRun": True,
        "extraEnv": [
            {"name": "MEMWARDEN_RISK__CONCURRENT_NAMESPACES", "value": "16"},
            {"name": "MEMWARDEN_CAPTURE_POD_WAIT_SECONDS", "value": "45"},
        ],
        "extraArgs": ["--verbose"],
    }
    docs = render(helm, namespace="ops", values=values)
    settings = Settings.from_env(container_env(docs, "ops"))
    assert (settings.status.debounce_seconds, settings.status.resync_seconds) == (5, 60)
    assert settings.capture.timeout_seconds == 600
    assert settings.capture.pod_wait_seconds == 45, "extraEnv comes last and wins"
    assert settings.risk.concurrent_namespaces == 16, "the nested name wins over the flat one"
    assert settings.updates.interval_seconds == 10
    assert settings.updates.deferred_grace_seconds == 0
    assert settings.evidence.max_bundle_bytes == 2**30
    assert settings.evidence.max_age_seconds == 86400
    assert settings.evidence.token_audiences == ("memwarden", "https://kubernetes.default.svc")
    assert settings.evidence.upload_source_check is False
    assert (settings.webhook.host, settings.admission.background_nice) == ("::", 0)
    assert settings.dry_run is True
    args = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["run", "--dry-run", "--verbose"]


def test_high_availability_values_reach_the_settings(helm: Path) -> None:
    values = {
        **HIGH_AVAILABILITY,
        "leaderElection": {
            "leaseDurationSeconds": 20,
            "renewDeadlineSeconds": 12,
            "retryPeriodSeconds": 3,
        },
        "webhook": {"drainSeconds": 8},
    }
    docs = render(helm, namespace="ops", values=values, release="warden")
    settings = Settings.from_env(container_env(docs, "ops"))
    leader = settings.leader
    assert (leader.election, leader.lease_name, leader.identity) == (
        True,
        "warden-memwarden",
        POD_NAME,
    )
    assert (
        leader.lease_duration_seconds,
        leader.renew_deadline_seconds,
        leader.retry_period_seconds,
    ) == (20, 12, 3)
    evidence = settings.evidence
    assert evidence.backend == "s3"
    assert (evidence.s3_endpoint_url, evidence.s3_bucket, evidence.s3_addressing_style) == (
        "https://s3.storage.svc:8333",
        "memwarden-evidence",
        "path",
    )
    assert evidence.s3_ca_file == "/etc/memwarden/s3-ca/ca.crt"
    assert evidence.s3_presign_downloads_seconds == 30
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    [tmp] = [v for v in pod["volumes"] if v["name"] == "tmp"]
    assert tmp["emptyDir"]["sizeLimit"] == "640Mi", "room to analyse a bundle fetched from S3"
    assert settings.webhook.drain_seconds == 8


def test_values_the_schema_refuses(helm: Path) -> None:
    for values in (
        {"status": {"debounceSeconds": 0}},
        {"evidence": {"tokenAudiences": []}},
        {"webhook": {"backgroundNice": 20}},
        {"extraArgs": [1]},
    ):
        result = template(helm, namespace="ops", values=values)
        assert result.returncode != 0, values
        assert "values don't meet the specifications of the schema" in result.stderr, values


def test_helm_lint(helm: Path) -> None:
    result = subprocess.run(
        [str(helm), "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", VALUE_SETS)
def test_rendered_chart_is_accepted_by_the_api_server(
    helm: Path, devcluster: Path, kube: client.ApiClient, namespace: str, values: dict[str, Any]
) -> None:
    # Pod Security "restricted" warns about the Deployment's pod template if it falls short.
    kubectl(
        devcluster, "label", "namespace", namespace, "pod-security.kubernetes.io/warn=restricted"
    )
    docs = render(helm, namespace=namespace, values=values, release="mw")
    ours = [d for d in docs if not d["apiVersion"].startswith(FOREIGN_GROUPS)]
    for watched in values.get("namespaces", {}).get("watch", []):  # their Roles go there
        ensure_namespace(client.CoreV1Api(kube), watched)
    applied = kubectl(
        devcluster,
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        input=yaml.safe_dump_all(ours),
        check=False,
    )
    assert applied.returncode == 0, applied.stderr
    assert "would violate PodSecurity" not in applied.stderr, applied.stderr
    assert applied.stdout.count("(server dry run)") == len(ours)

    # The operator accepts the environment the chart gives it.
    settings = Settings.from_env(container_env(docs, namespace))
    assert settings.namespace == namespace
    assert settings.webhook.configuration_name == "mw-memwarden"
    assert settings.webhook.service_name == "mw-memwarden"
    kinds = {d["kind"] for d in docs}
    if values.get("webhook", {}).get("certs", {}).get("mode") == "certManager":
        assert settings.webhook.cert_file and settings.webhook.key_file
        assert {"Certificate", "Issuer", "ServiceMonitor", "PrometheusRule"} <= kinds
        config = one(docs, "MutatingWebhookConfiguration")
        assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
            f"{namespace}/mw-memwarden-webhook"
        )
        role = one(docs, "Role")  # no Secrets without self-made certificates: the Lease only
        assert {r["resources"][0] for r in role["rules"]} == {"leases"}
        dashboard = json.loads(one(docs, "ConfigMap")["data"]["memwarden.json"])
        assert any("webhook" in panel["title"].lower() for panel in dashboard["panels"])
    else:
        assert not settings.webhook.cert_file
        assert settings.webhook.ca_secret == "mw-memwarden-webhook-ca"
    if "kubelet" in values:
        assert settings.kubelet.throttling_factor == 0.8
        assert settings.kubelet.reservation_policy == "TieredReservation"
        assert settings.kubelet.node_allocatable == 15 * 2**30
        assert settings.kubelet.page_size == 65536
        assert settings.risk.prometheus_url == "http://prometheus.monitoring:9090"
        assert settings.capture.toolbox_image == "registry.example/tools:1"
        assert settings.capture.max_concurrent == 5
        assert settings.updates.evictions_per_minute == 40
        assert settings.updates.evictions_per_minute_per_policy == 8
        assert settings.never_governed == {"kube-system", "batch", "ci", namespace}
        assert settings.webhook.cert_validity_seconds == 30 * 86400
    if values.get("replicas", 1) > 1:
        assert settings.evidence.backend == "s3"
        assert settings.leader.election is True
        assert {"PodDisruptionBudget"} <= kinds and "PersistentVolumeClaim" not in kinds
    if values.get("evidence", {}).get("existingClaim"):
        claim = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"][1]
        assert claim["persistentVolumeClaim"]["claimName"] == "shared-evidence"
        assert settings.evidence.max_total_bytes == 10 * 2**30
        assert settings.evidence.namespace_max_bytes == 2 * 2**30
        assert "PersistentVolumeClaim" not in kinds and "PodDisruptionBudget" not in kinds
        args = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args == ["run", "--namespace=shop", "--namespace=payments"]


def test_the_operator_pod_is_restricted_and_probed(helm: Path) -> None:
    pod = one(render(helm, namespace="memwarden-system"), "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["limits"]["memory"]


@pytest.mark.parametrize(
    ("values", "scheme"),
    [
        pytest.param({}, "https", id="https-by-default"),
        pytest.param({"webhook": {"certs": {"mode": "certManager"}}}, "https", id="cert-manager"),
        pytest.param({"http": {"insecure": True}}, "http", id="plain-http-opt-out"),
    ],
)
def test_the_http_api_is_https_unless_opted_out(
    helm: Path, values: dict[str, Any], scheme: str
) -> None:
    docs = render(helm, namespace="memwarden-system", values=values)
    settings = Settings.from_env(container_env(docs, "memwarden-system"))
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert settings.http.insecure is (scheme == "http")
    assert settings.evidence.base_url == (
        f"{scheme}://memwarden.memwarden-system.svc:8443/evidence"
    )
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["scheme"] == scheme.upper()
    if values.get("webhook"):  # cert-manager's Secret carries the CA debug containers trust
        assert settings.evidence.upload_ca_file == "/etc/memwarden/webhook/ca.crt"
    else:  # self-made: the rotation's bundle (or nothing to trust when insecure)
        assert settings.evidence.upload_ca_file is None


@pytest.mark.parametrize(
    ("values", "secret", "key"),
    [
        pytest.param({}, "memwarden-webhook-ca", "ca-bundle.crt", id="self-made-cas"),
        pytest.param(
            {"webhook": {"certs": {"mode": "certManager"}}},
            "memwarden-webhook-tls",
            "ca.crt",
            id="cert-manager",
        ),
        pytest.param({"http": {"tlsSecretName": "api-tls"}}, "api-tls", "ca.crt", id="own-secret"),
    ],
)
def test_the_alertmanager_config_trusts_the_http_apis_ca(
    helm: Path, values: dict[str, Any], secret: str, key: str
) -> None:
    """Alertmanager (through the Prometheus Operator) sends the token over HTTPS and
    verifies the certificate with the CA that signs it, not insecureSkipVerify."""
    docs = render(
        helm,
        namespace="memwarden-system",
        values={**values, "alertmanager": {"config": {"enabled": True}}},
    )
    config = one(docs, "AlertmanagerConfig")
    (webhook,) = config["spec"]["receivers"][0]["webhookConfigs"]
    assert webhook["url"] == "https://memwarden.memwarden-system.svc:8443/alertmanager/v4"
    http = webhook["httpConfig"]
    assert http["authorization"]["credentials"] == {
        "name": "memwarden-alertmanager",
        "key": "token",
    }
    assert http["tlsConfig"] == {
        "serverName": "memwarden.memwarden-system.svc",
        "ca": {"secret": {"name": secret, "key": key}},
    }
    assert config["spec"]["route"]["matchers"] == [
        {"name": "memwarden", "value": "capture", "matchType": "="}
    ]


INVALID = [
    pytest.param({"replicas": "two"}, "replicas", id="wrong-type"),
    pytest.param({"webhook": {"timeout": 3}}, "timeout", id="unknown-key"),
    pytest.param({"colour": "blue"}, "colour", id="unknown-top-level-key"),
    pytest.param({"webhook": {"timeoutSeconds": 30}}, "timeoutSeconds", id="timeout-30"),
    pytest.param(
        {"kubelet": {"memoryReservationPolicy": "Tiered"}},
        "memoryReservationPolicy",
        id="bad-reservation-policy",
    ),
    pytest.param({"replicas": -1}, "replicas", id="negative-replicas"),
    pytest.param({"replicas": 2}, "/evidence/backend", id="replicas-without-object-storage"),
    pytest.param({"evidence": {"backend": "s3"}}, "/evidence/s3/bucket", id="s3-without-bucket"),
    pytest.param({"evidence": {"backend": "gcs"}}, "backend", id="unknown-store"),
    pytest.param(
        {"evidence": {"backend": "s3", "s3": {"bucket": "Evidence_1"}}},
        "bucket",
        id="bad-bucket-name",
    ),
    pytest.param({"antiAffinity": "always"}, "antiAffinity", id="bad-anti-affinity"),
    pytest.param({"webhook": {"drainSeconds": -1}}, "drainSeconds", id="negative-drain"),
    pytest.param({"fullnameOverride": "Mem_Warden"}, "fullnameOverride", id="bad-fullname"),
    pytest.param({"extraVolumeMounts": [{"name": "ca"}]}, "mountPath", id="mount-without-path"),
    pytest.param(
        {"serviceMonitor": {"interval": "30s", "scrapeTimeout": "1m"}},
        "scrapeTimeout",
        id="scrape-timeout-above-interval",
    ),
    pytest.param({"evidence": {"namespaceQuota": "2 GB"}}, "namespaceQuota", id="bad-quota"),
    pytest.param(
        {"kubelet": {"memoryThrottlingFactor": 1.5}}, "memoryThrottlingFactor", id="factor-above-1"
    ),
    pytest.param({"webhook": {"certs": {"mode": "vault"}}}, "mode", id="unknown-cert-mode"),
    pytest.param(
        {"webhook": {"certs": {"selfSigned": {"renewBeforeDays": 90}}}},
        "renewBeforeDays",
        id="renew-before-validity",
    ),
    pytest.param({"alertmanager": {"receiver": {"token": "short"}}}, "token", id="weak-token"),
    pytest.param(
        {"prometheus": {"recordingRules": "always"}}, "recordingRules", id="bad-recording-mode"
    ),
    pytest.param({"prometheus": {"rateWindow": "1.5m"}}, "rateWindow", id="fractional-window"),
    pytest.param(
        {"prometheusRule": {"recordingRules": {"horizons": ["600"]}}},
        "horizons",
        id="horizon-without-unit",
    ),
]


@pytest.mark.parametrize(
    ("values", "fullname", "name"),
    [
        pytest.param({}, "mw-memwarden", "memwarden", id="defaults"),
        pytest.param({"nameOverride": "warden"}, "mw-warden", "warden", id="name-override"),
        pytest.param({"fullnameOverride": "guard"}, "guard", "memwarden", id="fullname-override"),
    ],
)
def test_name_overrides_name_every_object_and_the_operator_follows(
    helm: Path, values: dict[str, Any], fullname: str, name: str
) -> None:
    docs = render(helm, namespace="memwarden-system", values=values, release="mw")
    for doc in docs:
        if doc["kind"] in {"CustomResourceDefinition"}:
            continue
        assert doc["metadata"]["name"].startswith(fullname), doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == name
    deployment = one(docs, "Deployment", fullname)
    assert deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == name
    settings = Settings.from_env(container_env(docs, "memwarden-system"))
    assert settings.webhook.configuration_name == fullname
    assert settings.webhook.service_name == fullname
    one(docs, "Service", fullname)
    one(docs, "MutatingWebhookConfiguration", fullname)


#: Every pod-level override the chart offers, at once.
POD_OVERRIDES: dict[str, Any] = {
    "podSecurityContext": {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    },
    "securityContext": {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/memwarden.json"},
    },
    "topologySpreadConstraints": [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "{{ .Release.Name }}"}},
        }
    ],
    "extraVolumes": [{"name": "prometheus-ca", "configMap": {"name": "prometheus-ca"}}],
    "extraVolumeMounts": [
        {"name": "prometheus-ca", "mountPath": "/etc/prometheus-ca", "readOnly": True}
    ],
    "podDisruptionBudget": {"enabled": True},
    "serviceMonitor": {
        "enabled": True,
        "interval": "30s",
        "scrapeTimeout": "20s",
        "relabelings": [{"action": "replace", "targetLabel": "team", "replacement": "sre"}],
        "metricRelabelings": [
            {"action": "drop", "sourceLabels": ["__name__"], "regex": "python_gc_.*"}
        ],
    },
}


def test_pod_overrides_reach_the_pod_and_the_api_server_accepts_them(
    helm: Path, devcluster: Path, namespace: str
) -> None:
    docs = render(helm, namespace=namespace, values=POD_OVERRIDES, release="mw")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"] == POD_OVERRIDES["podSecurityContext"]
    assert container["securityContext"] == POD_OVERRIDES["securityContext"]
    [spread] = pod["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"] == {"app.kubernetes.io/instance": "mw"}
    assert {"name": "prometheus-ca", "configMap": {"name": "prometheus-ca"}} in pod["volumes"]
    assert POD_OVERRIDES["extraVolumeMounts"][0] in container["volumeMounts"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]  # kept
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    [endpoint] = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scrapeTimeout"] == "20s"
    assert endpoint["relabelings"] == POD_OVERRIDES["serviceMonitor"]["relabelings"]
    assert endpoint["metricRelabelings"] == POD_OVERRIDES["serviceMonitor"]["metricRelabelings"]
    ours = [d for d in docs if not d["apiVersion"].startswith(FOREIGN_GROUPS)]
    applied = kubectl(
        devcluster, "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(ours)
    )
    assert applied.stdout.count("(server dry run)") == len(ours)


def test_one_replica_gets_no_disruption_budget_by_default(helm: Path) -> None:
    docs = render(helm, namespace="memwarden-system")
    assert "PodDisruptionBudget" not in {d["kind"] for d in docs}
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert one(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}, "a RWO volume"
    assert "affinity" not in pod and "topologySpreadConstraints" not in pod
    assert one(docs, "PersistentVolumeClaim")


def test_more_replicas_get_a_budget_spread_and_rolling_updates(helm: Path) -> None:
    """replicas > 1 (object storage): minAvailable 1, replicas spread over nodes and
    zones, a rolling update that starts a replica before stopping one, no volume."""
    docs = render(helm, namespace="memwarden-system", values=HIGH_AVAILABILITY)
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    pod = deployment["spec"]["template"]["spec"]
    [preferred] = pod["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert preferred["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert (
        preferred["podAffinityTerm"]["labelSelector"]["matchLabels"]
        == (deployment["spec"]["selector"]["matchLabels"])
    )
    [spread] = pod["topologySpreadConstraints"]
    assert (spread["topologyKey"], spread["whenUnsatisfiable"]) == (
        "topology.kubernetes.io/zone",
        "ScheduleAnyway",
    )
    assert "PersistentVolumeClaim" not in {d["kind"] for d in docs}
    assert "evidence" not in {v["name"] for v in pod["volumes"]}
    container = pod["containers"][0]
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs == {
        "AWS_ACCESS_KEY_ID": {"name": "memwarden-s3", "key": "AWS_ACCESS_KEY_ID"},
        "AWS_SECRET_ACCESS_KEY": {"name": "memwarden-s3", "key": "AWS_SECRET_ACCESS_KEY"},
    }, "the keys come from the Secret, never from values"
    assert pod["terminationGracePeriodSeconds"] > 5 + 10, "drain + Lease release fit"


def test_the_users_affinity_and_spread_replace_the_charts(helm: Path) -> None:
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["ops"]}]}
                ]
            }
        }
    }
    values = {**HIGH_AVAILABILITY, "affinity": affinity, "antiAffinity": "none"}
    pod = one(render(helm, namespace="ops", values=values), "Deployment")["spec"]["template"]
    assert pod["spec"]["affinity"] == affinity
    assert "topologySpreadConstraints" not in pod["spec"]


@pytest.mark.parametrize(("values", "field"), INVALID)
def test_invalid_values_are_refused(helm: Path, values: dict[str, Any], field: str) -> None:
    result = template(helm, namespace="memwarden-system", values=values)
    assert result.returncode != 0, f"accepted: {values}"
    assert field in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("values", "rules"),
    [
        pytest.param({}, RuleSet(), id="defaults"),
        pytest.param(
            {
                "prometheus": {
                    "regressionWindow": "10m",
                    "rateWindow": "2m",
                    "oomWindow": "15m",
                    "recordingRules": "on",
                },
                "prometheusRule": {
                    "recordingRules": {"interval": "30s", "horizons": ["5m", "1h30m"]},
                },
            },
            RuleSet(
                windows=Windows(regression="10m", rate="2m", oom="15m"),
                horizons=("5m", "1h30m"),
                interval="30s",
            ),
            id="windows-horizons-interval",
        ),
    ],
)
def test_rendered_recording_rules_are_the_operators(
    helm: Path, values: dict[str, Any], rules: RuleSet, tmp_path: Path
) -> None:
    """The chart's recording rules are RuleSet's for the windows it gives the operator."""
    values = {**values, "prometheusRule": {"enabled": True, **values.get("prometheusRule", {})}}
    docs = render(helm, namespace="ops", values=values)
    groups = one(docs, "PrometheusRule")["spec"]["groups"]
    (group,) = [g for g in groups if g["name"] == "memwarden-risk"]
    assert group == rules.group()
    settings = Settings.from_env(container_env(docs, "ops"))
    operator_windows = Windows(
        regression=settings.risk.regression_window,
        rate=settings.risk.rate_window,
        oom=settings.risk.oom_window,
    )
    assert operator_windows == rules.windows
    assert settings.risk.recording_rules == values.get("prometheus", {}).get(
        "recordingRules", "auto"
    )
    # Prometheus' own checker accepts the rendered group.
    rendered = tmp_path / "rules.yml"
    rendered.write_text(yaml.safe_dump({"groups": groups}))
    checked = subprocess.run(
        ["promtool", "check", "rules", str(rendered)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_recording_rules_can_be_left_out(helm: Path) -> None:
    values = {"prometheusRule": {"enabled": True, "recordingRules": {"enabled": False}}}
    groups = one(render(helm, namespace="ops", values=values), "PrometheusRule")["spec"]["groups"]
    assert [g["name"] for g in groups] == ["memwarden"]


def test_chart_crds_are_the_generated_ones() -> None:
    generated = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    shipped = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert shipped == generated, "charts/memwarden/crds/ differs from crds/: copy crds/ over"


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({}, id="defaults"),
        pytest.param(
            {"webhook": {"timeoutSeconds": 5}, "namespaces": {"exclude": ["ci", "kube-system"]}},
            id="extra-exclusions",
        ),
    ],
)
def test_rendered_webhook_is_what_manifests_py_makes(helm: Path, values: dict[str, Any]) -> None:
    docs = render(helm, namespace="ops", values=values)
    rendered = one(docs, "MutatingWebhookConfiguration")
    expected = mutating_webhook_configuration(
        ca_bundle=b"",  # published by the operator (or cert-manager) after install
        service={"name": "memwarden", "namespace": "ops", "port": 443},
        excluded_namespaces=[
            "kube-system",
            "ops",
            *values.get("namespaces", {}).get("exclude", []),
        ],
        timeout_seconds=values.get("webhook", {}).get("timeoutSeconds", 3),
        name="memwarden",
    )
    assert rendered["webhooks"] == expected["webhooks"]
    assert rendered["metadata"]["name"] == expected["metadata"]["name"]
    assert expected["metadata"]["labels"].items() <= rendered["metadata"]["labels"].items()


@pytest.mark.parametrize(
    ("values", "account"),
    [
        pytest.param({}, "memwarden", id="chart-made-service-account"),
        pytest.param(
            {"serviceAccount": {"create": False, "name": "shared-sa"}}, "shared-sa", id="named"
        ),
    ],
)
def test_rendered_incident_policy_is_what_manifests_py_makes(
    helm: Path, values: dict[str, Any], account: str
) -> None:
    docs = render(helm, namespace="ops", values=values)
    expected = incident_admission_policy(
        operator_username=service_account_username(namespace="ops", name=account),
        name="memwarden-incidents",
    )
    for kind, made in zip(
        ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"), expected, strict=True
    ):
        rendered = one(docs, kind, "memwarden-incidents")
        assert rendered["spec"] == made["spec"]
        assert made["metadata"]["labels"].items() <= rendered["metadata"]["labels"].items()


def test_rendered_policy_guard_is_what_manifests_py_makes(helm: Path) -> None:
    docs = render(helm, namespace="ops")
    expected = policy_guard(
        operator_username=service_account_username(namespace="ops", name="memwarden"),
        name="memwarden-policies",
    )
    for kind, made in zip(
        ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"), expected, strict=True
    ):
        rendered = one(docs, kind, "memwarden-policies")
        assert rendered["spec"] == made["spec"]
    off = render(helm, namespace="ops", values={"operatorReachPolicy": {"enabled": False}})
    assert not [d for d in off if d["metadata"]["name"] == "memwarden-policies"]


@pytest.mark.parametrize(
    "watch", [pytest.param([], id="cluster"), pytest.param(["shop", "pay"], id="watched")]
)
@pytest.mark.parametrize("mode", ["selfSigned", "certManager"])
def test_rendered_roles_are_rbac_py(helm: Path, mode: str, watch: list[str]) -> None:
    values = {"webhook": {"certs": {"mode": mode}}, "namespaces": {"watch": watch}}
    docs = render(helm, namespace="ops", values=values)
    self_signed = mode == "selfSigned"
    names = {"webhook_configuration": "memwarden", "ca_secret": "memwarden-webhook-ca"}
    cluster = one(docs, "ClusterRole")["rules"]
    assert cluster == rbac.policy_rules(
        scope="cluster", self_signed=self_signed, namespaced_watch=bool(watch), **names
    )
    assert (
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]} in cluster
    ) == (not watch)
    roles = [d for d in docs if d["kind"] == "Role" and d["metadata"]["namespace"] == "ops"]
    expected = rbac.policy_rules(scope="namespace", self_signed=self_signed, **names)
    assert [r["rules"] for r in roles] == ([expected] if expected else [])
    # With a watch list, the pod-level rules are bound in each listed namespace, and only there.
    watched = {
        d["metadata"]["namespace"]: d for d in docs if d["kind"] == "Role" and d not in roles
    }
    assert sorted(watched) == sorted(watch)
    for role in watched.values():
        assert role["rules"] == rbac.policy_rules(scope="watched", self_signed=self_signed)
    bindings = [
        d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["namespace"] in watch
    ]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(watch)
    for binding in bindings:
        assert (
            binding["roleRef"]["name"]
            == watched[binding["metadata"]["namespace"]]["metadata"]["name"]
        )
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "memwarden", "namespace": "ops"}
        ]


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({}, id="defaults"),
        pytest.param(
            {
                "capture": {"toolboxImage": "registry.example/tools:1"},
                "http": {"port": 9443, "tlsSecretName": "memwarden-http-tls"},
                "serviceAccount": {"name": "warden"},
            },
            id="toolbox-port-and-service-account",
        ),
    ],
)
def test_rendered_reach_policy_is_what_reach_py_makes(helm: Path, values: dict[str, Any]) -> None:
    """The chart's policy is memwarden.reach's, for the toolbox image and evidence address
    the chart gives the operator: it admits the debug containers this operator plans."""
    docs = render(helm, namespace="ops", values=values)
    settings = Settings.from_env(container_env(docs, "ops"))
    assert settings.evidence.base_url
    expected = operator_reach_policy(
        service_account=values.get("serviceAccount", {}).get("name", "memwarden"),
        namespace="ops",
        toolbox_image=settings.capture.toolbox_image,
        evidence_authority=urllib.parse.urlsplit(settings.evidence.base_url).netloc,
        name="memwarden-operator-reach",
    )
    for kind, want in zip(
        ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"), expected, strict=True
    ):
        rendered = one(docs, kind, want["metadata"]["name"])
        assert rendered["spec"] == want["spec"]
        assert want["metadata"]["labels"].items() <= rendered["metadata"]["labels"].items()
    off = render(helm, namespace="ops", values={"operatorReachPolicy": {"enabled": False}})
    assert "memwarden-operator-reach" not in {d["metadata"]["name"] for d in off}


# -- least privilege, on the real API server ---------------------------------------------


@pytest.fixture
def other_namespace(kube: client.ApiClient) -> Iterator[str]:
    core = client.CoreV1Api(kube)
    name = unique_name("t-rbac-other")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def _status(call: Any) -> int:
    try:
        call()
    except ApiException as exc:
        return int(exc.status)
    return 200


def test_the_service_account_can_do_what_memwarden_needs_and_no_more(
    helm: Path,
    devcluster: Path,
    kube: client.ApiClient,
    namespace: str,
    other_namespace: str,
) -> None:
    release = unique_name("rbac")
    docs = render(helm, namespace=namespace, release=release)
    rbac_docs = [
        d
        for d in docs
        if d["kind"]
        in {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    ]
    cluster_scoped = [d for d in rbac_docs if d["kind"].startswith("Cluster")]
    try:
        kubectl(
            devcluster, "apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(rbac_docs)
        )
        core = client.CoreV1Api(kube)
        sa = one(docs, "ServiceAccount")["metadata"]["name"]
        core.create_namespaced_secret(
            other_namespace,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name="db-password"), string_data={"p": "x"}
            ),
        )
        ca_secret = f"{release}-memwarden-webhook-ca"
        for name in (ca_secret, "unrelated"):
            core.create_namespaced_secret(
                namespace,
                client.V1Secret(metadata=client.V1ObjectMeta(name=name), string_data={"k": "v"}),
            )
        pod = make_pod_body("target")
        core.create_namespaced_pod(other_namespace, pod)
        as_sa = client.CoreV1Api(acting_as(kube, namespace, sa))

        # RBAC is evaluated as soon as the bindings exist; the token's user is known at once.
        wait_for(
            lambda: _status(lambda: as_sa.list_pod_for_all_namespaces(limit=1)) == 200,
            timeout=30,
            what="the ServiceAccount's ClusterRoleBinding in effect",
        )
        # No Secrets outside its namespace, nor cluster-wide, nor other Secrets of its own.
        assert _status(lambda: as_sa.read_namespaced_secret("db-password", other_namespace)) == 403
        assert _status(lambda: as_sa.list_secret_for_all_namespaces(limit=1)) == 403
        assert _status(lambda: as_sa.list_namespaced_secret(namespace)) == 403
        assert _status(lambda: as_sa.read_namespaced_secret("unrelated", namespace)) == 403
        assert _status(lambda: as_sa.read_namespaced_secret(ca_secret, namespace)) == 200
        # Never a pod's spec; only its ephemeral containers.
        assert (
            _status(
                lambda: as_sa.patch_namespaced_pod(
                    "target", other_namespace, {"metadata": {"labels": {"x": "y"}}}
                )
            )
            == 403
        )
        assert _status(lambda: as_sa.delete_namespaced_pod("target", other_namespace)) == 403
        debug = {
            "spec": {
                "ephemeralContainers": [
                    {
                        "name": "debugger",
                        "image": "example.com/toolbox:1",
                        "targetContainerName": "app",
                    }
                ]
            }
        }
        assert (
            _status(
                lambda: as_sa.patch_namespaced_pod_ephemeralcontainers(
                    "target", other_namespace, debug, dry_run="All"
                )
            )
            == 200
        )
        assert _status(lambda: as_sa.list_namespaced_pod(other_namespace)) == 200
        # The webhook configuration only by its own name (SubjectAccessReview, as the API
        # server authorises it: a real patch would repoint every pod creation here).
        user = f"system:serviceaccount:{namespace}:{sa}"
        authz = client.AuthorizationV1Api(kube)

        def allowed(verb: str, group: str, resource: str, name: str = "") -> bool:
            review = authz.create_subject_access_review(
                client.V1SubjectAccessReview(
                    spec=client.V1SubjectAccessReviewSpec(
                        user=user,
                        resource_attributes=client.V1ResourceAttributes(
                            verb=verb, group=group, resource=resource, name=name or None
                        ),
                    )
                )
            )
            return bool(review.status.allowed)

        webhooks = ("patch", "admissionregistration.k8s.io", "mutatingwebhookconfigurations")
        assert allowed(*webhooks, f"{release}-memwarden")
        assert not allowed(*webhooks, "someone-elses")
        assert allowed("create", "", "pods/eviction")  # update Recreate
        assert not allowed("delete", "", "pods")  # never a plain delete
        assert allowed("patch", "", "pods/resize")  # update InPlace: memory only
        assert not allowed("patch", "", "pods")  # never the pod itself
        assert not allowed("update", "", "pods")
        assert allowed("create", "authentication.k8s.io", "tokenreviews")
        assert allowed("create", "authorization.k8s.io", "subjectaccessreviews")
    finally:
        delete_all(devcluster, cluster_scoped)


def test_with_watched_namespaces_the_service_account_reaches_their_pods_only(
    helm: Path,
    devcluster: Path,
    kube: client.ApiClient,
    namespace: str,
    other_namespace: str,
) -> None:
    """namespaces.watch: the pod-level rules are bound in the watched namespace alone, and
    there the chart's operator-reach policy admits the toolbox as planned and no other."""
    core = client.CoreV1Api(kube)
    watched = unique_name("t-watched")
    ensure_namespace(core, watched)
    release = unique_name("reach")
    values = {
        "namespaces": {"watch": [watched]},
        "capture": {"toolboxImage": "registry.example/tools:1"},
    }
    docs = render(helm, namespace=namespace, release=release, values=values)
    kinds = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    kinds |= {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    applied = [d for d in docs if d["kind"] in kinds]
    cluster_scoped = [
        d for d in applied if "namespace" not in d["metadata"] and d["kind"] != "ServiceAccount"
    ]
    try:
        kubectl(devcluster, "apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(applied))
        sa = one(docs, "ServiceAccount")["metadata"]["name"]
        as_sa = client.CoreV1Api(acting_as(kube, namespace, sa))
        for ns in (watched, other_namespace):
            core.create_namespaced_pod(ns, make_pod_body("target"))
        wait_for(
            lambda: _status(lambda: as_sa.list_namespaced_pod(watched)) == 200,
            timeout=30,
            what="the RoleBinding in the watched namespace in effect",
        )
        # Pods, their namespace and Events: in the watched namespace, not elsewhere.
        assert _status(lambda: as_sa.list_namespaced_pod(other_namespace)) == 403
        assert _status(lambda: as_sa.list_pod_for_all_namespaces(limit=1)) == 403
        assert _status(lambda: as_sa.read_namespaced_pod("target", other_namespace)) == 403
        assert _status(lambda: as_sa.read_namespace(watched)) == 200
        assert _status(lambda: as_sa.read_namespace(other_namespace)) == 403

        def event(ns: str) -> int:
            body = {
                "metadata": {"generateName": "target."},
                "involvedObject": {"kind": "Pod", "name": "target", "namespace": ns},
                "reason": "Test",
                "message": "reach",
            }
            return _status(lambda: as_sa.create_namespaced_event(ns, body, dry_run="All"))

        assert event(watched) == 200
        assert event(other_namespace) == 403

        # Evictions (update Recreate) and the budgets the gate reads: the same.
        def evict(ns: str) -> int:
            body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "target"}}
            return _status(
                lambda: as_sa.create_namespaced_pod_eviction("target", ns, body, dry_run="All")
            )

        def budgets(ns: str) -> int:
            policy_api = client.PolicyV1Api(as_sa.api_client)
            return _status(lambda: policy_api.list_namespaced_pod_disruption_budget(ns))

        assert evict(watched) == 200
        assert evict(other_namespace) == 403
        assert budgets(watched) == 200
        assert budgets(other_namespace) == 403
        settings = Settings.from_env(container_env(docs, namespace))
        assert settings.evidence.base_url

        def toolbox(ns: str, **changes: Any) -> dict[str, Any]:
            container = plan_ephemeral_container(
                incident="leak-1",
                incident_uid=f"uid-{ns}",
                target_container="app",
                image=settings.capture.toolbox_image,
                upload_url=bundle_url(str(settings.evidence.base_url), namespace=ns, name="leak-1"),
                upload_token="token",
                pprof_port=6060,
                trace_seconds=5,
                artifacts=ALL_ARTIFACTS,
                max_core_bytes=2 << 30,
                ptrace_allowed=True,
            )
            return {"spec": {"ephemeralContainers": [{**container, **changes}]}}

        def add(ns: str, body: dict[str, Any]) -> int:
            return _status(
                lambda: as_sa.patch_namespaced_pod_ephemeralcontainers(
                    "target", ns, body, dry_run="All"
                )
            )

        refused = f"ValidatingAdmissionPolicy '{release}-memwarden-operator-reach'"
        other_image = toolbox(watched, image="docker.io/library/busybox:1")

        def refused_by_policy() -> bool:
            try:
                as_sa.patch_namespaced_pod_ephemeralcontainers(
                    "target", watched, other_image, dry_run="All"
                )
            except ApiException as exc:
                return exc.status == 403 and refused in str(exc.body)
            return False

        wait_for(refused_by_policy, timeout=30, what="the chart's operator-reach policy in effect")
        assert add(watched, toolbox(watched)) == 200
        assert add(other_namespace, toolbox(other_namespace)) == 403
    finally:
        delete_all(devcluster, cluster_scoped)
        core.delete_namespace(watched)


def make_pod_body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [make_container()]},
    }


# -- certificate rotation under load, with the real operator -------------------------------


def _served_certificate(port: int) -> bytes:
    pem = ssl.get_server_certificate(("127.0.0.1", port), timeout=2)
    return pem.encode()


def _verifies(port: int, ca_file: Path) -> bool:
    """Whether ``ca_file`` verifies what ``port`` serves (a TLS handshake as a client)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1"),
        ):
            return True
    except ssl.SSLCertVerificationError:
        return False


def test_the_webhook_keeps_mutating_while_its_certificates_rotate(
    crds: Path, kube: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    """Validity 20 s, renewal 10 s ahead, files checked each second: a rotation every
    ~10 s. Pods created meanwhile (server-side dry run, through the API server and its
    webhook call) must all be mutated: none admitted unmutated because TLS failed. The
    HTTP API serves the same certificates, reloaded in place, and the CA bundle that
    debug containers and Alertmanager trust verifies them throughout."""
    core = client.CoreV1Api(kube)
    admission = client.AdmissionregistrationV1Api(kube)
    test_id = unique_name("rot")
    pods_ns = unique_name("t-rotation-pods")
    # memwarden.dev/ignore keeps every other memwarden webhook (other tests, other
    # sessions) away from these pods: only this test's configuration selects them.
    core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(
                name=pods_ns,
                labels={"memwarden.dev/ignore": "true", "memwarden.dev/rotation-test": test_id},
            )
        )
    )
    process = OperatorProcess(kubeconfig=crds, workdir=tmp_path)
    name = f"memwarden-rotation-{process.webhook_port}"
    config = mutating_webhook_configuration(
        ca_bundle=b"",
        url=f"https://127.0.0.1:{process.webhook_port}",
        excluded_namespaces=["kube-system", namespace],
        name=name,
    )
    config["webhooks"][0]["namespaceSelector"] = {
        "matchLabels": {"memwarden.dev/rotation-test": test_id}
    }
    process.extra_env.update(
        {
            "MEMWARDEN_NAMESPACE": namespace,
            "MEMWARDEN_WEBHOOK_CERT_FILE": "",
            "MEMWARDEN_WEBHOOK_KEY_FILE": "",
            "MEMWARDEN_WEBHOOK_CERT_DIR": str(tmp_path / "certs"),
            "MEMWARDEN_WEBHOOK_CONFIGURATION_NAME": name,
            "MEMWARDEN_WEBHOOK_CA_SECRET": "webhook-ca",
            "MEMWARDEN_WEBHOOK_CERT_VALIDITY_SECONDS": "20",
            "MEMWARDEN_WEBHOOK_CERT_RENEW_BEFORE_SECONDS": "10",
            "MEMWARDEN_WEBHOOK_CA_PROPAGATION_SECONDS": "2",
            "MEMWARDEN_WEBHOOK_CERT_CHECK_SECONDS": "1",
            "MEMWARDEN_WEBHOOK_FILE_CHECK_SECONDS": "1",
        }
    )
    process.extra_args.append(f"--namespace={pods_ns}")
    try:
        kubectl(crds, "apply", "-f", "-", input=yaml.safe_dump(config))
        kubectl(
            crds,
            "apply",
            "-f",
            "-",
            input=yaml.safe_dump(
                make_policy(
                    namespace=pods_ns,
                    spec=make_policy_spec(memory={"request": "64Mi", "limit": "128Mi"}),
                )
            ),
        )
        process.start()

        def create_pod() -> dict[str, Any]:
            body = make_pod_body(unique_name("p"))
            body["metadata"]["labels"] = {"app": "checkout"}
            created = core.create_namespaced_pod(pods_ns, body, dry_run="All")
            return dict(created.metadata.annotations or {})

        def bundle() -> str:
            found = admission.read_mutating_webhook_configuration(name)
            return str(found.webhooks[0].client_config.ca_bundle or "")

        # Ready: the operator published its CA and the API server trusts its certificate.
        wait_for(lambda: APPLIED_ANNOTATION in create_pod(), timeout=60, what="first mutation")

        bundles, served = {bundle()}, {_served_certificate(process.webhook_port)}
        http_served = {_served_certificate(process.http_port)}
        trust = tmp_path / "certs" / "ca.crt"
        untrusted = 0
        created = unmutated = 0
        deadline = time.monotonic() + 90
        last_probe = 0.0
        while time.monotonic() < deadline and min(len(served), len(bundles), len(http_served)) < 3:
            created += 1
            if APPLIED_ANNOTATION not in create_pod():
                unmutated += 1
            if time.monotonic() - last_probe > 0.5:
                last_probe = time.monotonic()
                bundles.add(bundle())
                served.add(_served_certificate(process.webhook_port))
                http_served.add(_served_certificate(process.http_port))
                if not _verifies(process.http_port, trust):
                    untrusted += 1
        log = process.log_tail(200_000)
        assert len(served) >= 3, f"the serving certificate rotated {len(served) - 1} time(s)"
        assert len(bundles) >= 3, "the caBundle did not change with the rotations"
        assert unmutated == 0, f"{unmutated} of {created} pods admitted unmutated"
        assert len(http_served) >= 3, "the HTTP API's certificate rotated with the webhook's"
        assert untrusted == 0, "the trust bundle (current, next, earlier CAs) verified it"
        assert "HTTP API serving certificate reloaded in place" in process.log_tail(200_000)
        assert created >= 30
        # Never silently: each renewal logs the new expiry.
        assert re.search(r"webhook serving certificate renewed .* valid until", log), log[-3000:]
        assert "reloaded in place" in log
        # The CA lives in the operator's namespace, current and (during overlap) next.
        ca = core.read_namespaced_secret("webhook-ca", namespace)
        assert "ca.crt" in (ca.data or {})
        current_ca = base64.b64decode(ca.data["ca.crt"])
        assert base64.b64decode(ca.data["ca-bundle.crt"]).startswith(current_ca), (
            "the public trust bundle the chart's AlertmanagerConfig reads"
        )
        assert current_ca in base64.b64decode(bundle())
        not_after = ssl_not_after(_served_certificate(process.webhook_port))
        assert not_after > dt.datetime.now(dt.UTC)
    finally:
        process.stop()
        kubectl(crds, "delete", "mutatingwebhookconfiguration", name, "--ignore-not-found")
        core.delete_namespace(pods_ns)


def ssl_not_after(pem: bytes) -> dt.datetime:
    from cryptography import x509

    return x509.load_pem_x509_certificate(pem).not_valid_after_utc


def test_the_rules_alert_when_no_replica_or_two_lead(helm: Path, tmp_path: Path) -> None:
    """``memwarden_leader`` is 1 on the leader, 0 on followers: a sum other than 1 means
    nothing reconciles (or a handover is stuck); Prometheus' checker accepts the rule."""
    values = {**HIGH_AVAILABILITY, "prometheusRule": {"enabled": True}}
    docs = render(helm, namespace="ops", values=values)
    [group] = [g for g in one(docs, "PrometheusRule")["spec"]["groups"] if g["name"] == "memwarden"]
    [rule] = [r for r in group["rules"] if r.get("alert") == "MemwardenNoSingleLeader"]
    assert "sum(memwarden_leader{" in rule["expr"] and rule["expr"].strip().endswith("!= 1")
    rendered = tmp_path / "rules.yml"
    rendered.write_text(yaml.safe_dump({"groups": [group]}))
    checked = subprocess.run(
        ["promtool", "check", "rules", str(rendered)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    stopped = one(render(helm, namespace="ops", values={**values, "replicas": 0}), "PrometheusRule")
    alerts = [r.get("alert") for g in stopped["spec"]["groups"] for r in g["rules"]]
    assert "MemwardenNoSingleLeader" not in alerts, "0 replicas: nobody is meant to lead"
