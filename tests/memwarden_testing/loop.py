"""The closed-loop stack's shared pieces: image names, the alert rule, the ``Loop`` record."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from kubernetes import client

from memwarden_testing.alertmanager import AlertmanagerProcess
from memwarden_testing.cluster import REPO
from memwarden_testing.nodesim import NodeSimulator
from memwarden_testing.operator import OperatorProcess
from memwarden_testing.prometheus import PrometheusServer

#: The image names the node simulator maps to local programs.
LEAKY_IMAGE = "registry.example.com/memwarden/leaky:dev"
TOOLBOX_IMAGE = "registry.example.com/memwarden/toolbox:dev"
ALERTED_PREFIX = "alerted-"
ALERT_RATIO = 0.5


@dataclass
class Loop:
    """Everything a closed-loop scenario talks to."""

    kubeconfig: Path
    kube: client.ApiClient
    sim: NodeSimulator
    prometheus: PrometheusServer
    alertmanager: AlertmanagerProcess
    operator: OperatorProcess


def alert_rule() -> dict[str, object]:
    """The rule of docs/alerting.md, for pods named alerted-*, with a test's threshold."""
    text = (REPO / "docs" / "alerting.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml")[1:]]
    rule: dict[str, object] = yaml.safe_load(blocks[0])["spec"]["groups"][0]["rules"][0]
    expr = str(rule["expr"]).replace(
        'container!="POD"}', f'container!="POD",pod=~"{ALERTED_PREFIX}.*"}}'
    )
    expr = expr.replace("> 0.9", f"> {ALERT_RATIO}")
    assert f"> {ALERT_RATIO}" in expr and ALERTED_PREFIX in expr, expr
    return {**rule, "expr": expr, "for": "2s"}
