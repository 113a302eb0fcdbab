"""Invalid policies are refused by `kubectl apply` with the field named; the operator lives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from memwarden_testing.builders import make_policy, make_policy_spec
from memwarden_testing.cluster import kubectl
from memwarden_testing.invalid_policies import INVALID
from memwarden_testing.operator import OperatorProcess


@pytest.mark.parametrize(("spec", "field"), INVALID)
def test_kubectl_apply_refuses_naming_the_field(
    memwarden: OperatorProcess, namespace: str, spec: dict[str, Any], field: str
) -> None:
    policy = make_policy("bad", namespace=namespace, spec=spec)
    result = kubectl(
        memwarden.kubeconfig, "apply", "-f", "-", input=yaml.safe_dump(policy), check=False
    )
    assert result.returncode != 0, "the API server accepted an invalid policy"
    assert field in result.stderr, result.stderr
    assert memwarden.process is not None and memwarden.process.poll() is None


def test_a_valid_policy_is_accepted(
    memwarden: OperatorProcess, namespace: str, devcluster: Path
) -> None:
    policy = make_policy(
        namespace=namespace,
        spec=make_policy_spec(
            memory={"protect": "1Gi", "high": "1536Mi", "max": "2Gi"}, go={"memoryLimit": "90%"}
        ),
    )
    kubectl(devcluster, "apply", "-f", "-", input=yaml.safe_dump(policy))
