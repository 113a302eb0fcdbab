"""memwarden.reach: the operator-reach policy agrees with the capture plan and the chart.

The policy itself is exercised on the real API server (tests/integration/
test_operator_reach.py); here, the pure contract: whatever the plan makes stays inside
what the policy admits, and the chart's template is the generated one.
"""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from memwarden import reach
from memwarden.capture import toolbox
from memwarden.capture.plan import (
    ALL_ARTIFACTS,
    TERMINATION_MESSAGE_PATH,
    TOOLBOX_COMMAND,
    TOOLBOX_ENV,
    TOOLBOX_FLAGS,
    plan_ephemeral_container,
)
from memwarden_testing.cluster import REPO

PLANS = [
    pytest.param({"ptrace_allowed": True}, id="ptrace"),
    pytest.param({"ptrace_allowed": False}, id="no-ptrace"),
    pytest.param({"ptrace_allowed": True, "upload_ca_pem": "PEM"}, id="upload-ca"),
    pytest.param({"ptrace_allowed": True, "artifacts": ("heap",)}, id="heap-only"),
]


def plan(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "incident": "checkout-7f9c-20261125-1812",
        "incident_uid": "3b1f0c52",
        "target_container": "app",
        "image": "ghcr.io/memwarden/memwarden:0.1.0",
        "upload_url": "https://memwarden.ops.svc:8443/evidence/v1/namespaces/shop/x/bundle",
        "upload_token": "tok",
        "pprof_port": 6060,
        "trace_seconds": 5,
        "artifacts": ALL_ARTIFACTS,
        "max_core_bytes": 2 << 30,
        **overrides,
    }
    return plan_ephemeral_container(**kwargs)


@pytest.mark.parametrize("overrides", PLANS)
def test_every_plan_is_inside_what_the_policy_admits(overrides: dict[str, Any]) -> None:
    """The CEL checks of memwarden.reach, restated over the plan's output: a flag, variable
    or field the plan starts using without naming it there fails here first."""
    container = plan(**overrides)
    command = container["command"]
    assert tuple(command[:2]) == TOOLBOX_COMMAND
    assert {a for a in command if a.startswith("-")} <= set(TOOLBOX_FLAGS)
    assert all("/" not in a or a == TERMINATION_MESSAGE_PATH for a in command)
    assert {e["name"] for e in container["env"]} <= set(TOOLBOX_ENV)
    assert all(set(e) == {"name", "value"} for e in container["env"])
    assert set(container) <= set(reach.CONTAINER_CHECKED + reach.CONTAINER_FREE)
    context = container["securityContext"]
    assert set(context) <= set(reach.SECURITY_CONTEXT_CHECKED + reach.SECURITY_CONTEXT_FREE)
    assert context["capabilities"]["drop"] == ["ALL"]
    assert set(context["capabilities"].get("add", [])) <= {reach.PTRACE}


def test_every_toolbox_flag_the_policy_admits_is_one_the_toolbox_knows() -> None:
    parser = argparse.ArgumentParser()
    toolbox.add_arguments(parser)
    known = {option for action in parser._actions for option in action.option_strings}
    assert set(TOOLBOX_FLAGS) <= known
    # Those that would send the bundle elsewhere or write outside the toolbox stay out.
    assert {"--upload", "--out", "--workdir", "--pid", "--pprof"} <= known - set(TOOLBOX_FLAGS)


def test_the_chart_template_is_the_generated_one() -> None:
    shipped = (REPO / reach.CHART_TEMPLATE).read_text()
    assert shipped == reach.chart_template(), (
        f"{reach.CHART_TEMPLATE} is stale: regenerate it with\n  python -c 'from "
        'memwarden.reach import chart_template; print(chart_template(), end="")\' > '
        f"{reach.CHART_TEMPLATE}"
    )


def test_the_policy_matches_only_the_operators_requests_on_ephemeral_containers() -> None:
    policy, binding = reach.operator_reach_policy(
        service_account="memwarden",
        namespace="ops",
        toolbox_image="registry.example/tools:1",
        evidence_authority="memwarden.ops.svc:8443",
    )
    spec = policy["spec"]
    assert spec["matchConstraints"]["resourceRules"][0]["resources"] == ["pods/ephemeralcontainers"]
    assert spec["matchConditions"][0]["expression"] == (
        'request.userInfo.username == "system:serviceaccount:ops:memwarden"'
    )
    assert spec["failurePolicy"] == "Fail"
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }
    assert any('"registry.example/tools:1"' in v["expression"] for v in spec["validations"])
    assert any('"https://memwarden.ops.svc:8443/"' in v["expression"] for v in spec["validations"])


@pytest.mark.parametrize(
    ("image", "authority", "field"),
    [
        pytest.param("", "memwarden.ops.svc:8443", "toolbox_image", id="no-image"),
        pytest.param("tools:1", "", "evidence_authority", id="no-authority"),
        pytest.param("tools:1", "memwarden.ops.svc:8443/x", "evidence_authority", id="a-path"),
    ],
)
def test_a_policy_without_its_parameters_is_refused(image: str, authority: str, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        reach.operator_reach_policy(
            service_account="memwarden",
            namespace="ops",
            toolbox_image=image,
            evidence_authority=authority,
        )
