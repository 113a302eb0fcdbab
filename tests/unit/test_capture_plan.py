"""The capture plan: the ephemeral container for an incident, and the PATCH that adds it."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from memwarden import cli
from memwarden.capture.plan import (
    ALL_ARTIFACTS,
    ENV_UPLOAD_TOKEN,
    ENV_UPLOAD_URL,
    PTRACE_SKIPPED_REASON,
    PlanError,
    ephemeral_container_name,
    ephemeral_container_patch,
    ephemeral_storage_allowance,
    plan_debug_identity,
    plan_ephemeral_container,
    ptrace_allowed_by_pod_security,
)
from memwarden_testing.builders import make_container, make_pod

UPLOAD_URL = "https://memwarden.memwarden-system.svc:8443/v1/upload/shop/checkout-7f9c"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
#: Fields the API server refuses on an ephemeral container.
FORBIDDEN = ("ports", "resources", "livenessProbe", "readinessProbe", "startupProbe", "lifecycle")


def plan(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "incident": "checkout-7f9c-20261125-1812",
        "incident_uid": "3b1f0c52-6f2e-4d7a-9a57-0c9e8d1f2a44",
        "target_container": "app",
        "image": "ghcr.io/memwarden/toolbox:0.1.0",
        "upload_url": UPLOAD_URL,
        "upload_token": "tok-123",
        "pprof_port": 6060,
        "trace_seconds": 5,
        "artifacts": ALL_ARTIFACTS,
        "max_core_bytes": 2 << 30,
        "ptrace_allowed": True,
    }
    kwargs.update(overrides)
    return plan_ephemeral_container(**kwargs)


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


@pytest.mark.parametrize(
    ("ptrace_allowed", "capabilities", "no_ptrace_flag", "gcore"),
    [
        pytest.param(True, {"drop": ["ALL"], "add": ["SYS_PTRACE"]}, False, True, id="ptrace"),
        pytest.param(False, {"drop": ["ALL"]}, True, False, id="no-ptrace"),
    ],
)
def test_ptrace_decides_capabilities_flag_and_gcore(
    ptrace_allowed: bool, capabilities: dict[str, list[str]], no_ptrace_flag: bool, gcore: bool
) -> None:
    container = plan(ptrace_allowed=ptrace_allowed)

    security = container["securityContext"]
    assert security["capabilities"] == capabilities
    assert security["privileged"] is False
    assert security["allowPrivilegeEscalation"] is False
    assert ("--no-ptrace" in container["command"]) is no_ptrace_flag
    assert ("gcore" in flag(container["command"], "--artifacts").split(",")) is gcore


@pytest.mark.parametrize("ptrace_allowed", [True, False], ids=["ptrace", "no-ptrace"])
def test_no_field_the_api_server_forbids(ptrace_allowed: bool) -> None:
    container = plan(ptrace_allowed=ptrace_allowed)

    assert not set(FORBIDDEN) & set(container)
    assert container["targetContainerName"] == "app"
    assert container["terminationMessagePolicy"] == "File"
    assert container["command"][:2] == ["memwarden", "capture"]


def test_upload_url_and_token_reach_the_toolbox_through_env() -> None:
    container = plan()

    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {ENV_UPLOAD_URL: UPLOAD_URL, ENV_UPLOAD_TOKEN: "tok-123"}
    assert "tok-123" not in container["command"]  # not on the command line (ps, logs)


@pytest.mark.parametrize("ptrace_allowed", [True, False], ids=["ptrace", "no-ptrace"])
def test_command_is_what_the_toolbox_parses(ptrace_allowed: bool) -> None:
    container = plan(ptrace_allowed=ptrace_allowed, artifacts=["gcore", "heap", "trace"])

    args = cli.build_parser(only="capture").parse_args(container["command"][1:])

    assert args.pprof_port == 6060
    assert args.trace_seconds == 5
    assert args.max_core_bytes == 2 << 30
    assert args.ptrace is ptrace_allowed
    assert args.artifacts == (("heap", "trace", "gcore") if ptrace_allowed else ("heap", "trace"))
    assert args.incident == "checkout-7f9c-20261125-1812"


@pytest.mark.parametrize(
    "uid",
    [
        pytest.param("a", id="short"),
        pytest.param("3b1f0c52-6f2e-4d7a-9a57-0c9e8d1f2a44", id="typical"),
        pytest.param("x" * 253, id="long"),
        pytest.param("shop/Checkout_UPPER.case", id="not-a-dns-label"),
    ],
)
def test_name_is_a_stable_dns_label(uid: str) -> None:
    name = ephemeral_container_name(uid)

    assert len(name) <= 63
    assert DNS_LABEL.match(name)
    assert name.startswith("memwarden-")
    assert name == ephemeral_container_name(uid)  # e.g. after an operator restart
    assert plan(incident_uid=uid)["name"] == name


def test_names_differ_between_incidents() -> None:
    names = {ephemeral_container_name(f"uid-{i}") for i in range(1000)}
    assert len(names) == 1000


def test_an_incident_created_again_under_its_name_gets_a_new_container() -> None:
    """Deleted and re-applied, an incident has a new UID: its toolbox must not be mistaken
    for the one that already ran (ephemeral containers stay in the pod for good)."""
    first = plan(incident="checkout-1", incident_uid="uid-first")
    again = plan(incident="checkout-1", incident_uid="uid-again")
    assert first["name"] != again["name"]


def test_plan_is_deterministic() -> None:
    one = plan(artifacts=["trace", "heap", "heap", "cgroup"])
    two = plan(artifacts=["cgroup", "trace", "heap"])

    assert one == two
    assert flag(one["command"], "--artifacts") == "heap,trace,cgroup"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        pytest.param({"incident": ""}, "incident", id="empty-incident"),
        pytest.param({"incident_uid": ""}, "incident_uid", id="empty-incident-uid"),
        pytest.param({"target_container": ""}, "target_container", id="empty-target"),
        pytest.param({"image": ""}, "image", id="empty-image"),
        pytest.param({"pprof_port": 0}, "pprof_port", id="port-zero"),
        pytest.param({"pprof_port": 70000}, "pprof_port", id="port-too-big"),
        pytest.param({"trace_seconds": 0}, "trace_seconds", id="no-trace-time"),
        pytest.param({"max_core_bytes": -1}, "max_core_bytes", id="negative-core"),
        pytest.param({"artifacts": ["heap", "dump"]}, "artifacts", id="unknown-artifact"),
        pytest.param({"artifacts": []}, "artifacts", id="no-artifacts"),
        pytest.param(
            {"artifacts": ["gcore"], "ptrace_allowed": False},
            "artifacts",
            id="only-gcore-no-ptrace",
        ),
    ],
)
def test_invalid_inputs_name_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(PlanError, match=field):
        plan(**overrides)


def test_only_gcore_without_ptrace_says_why() -> None:
    with pytest.raises(PlanError, match=re.escape(PTRACE_SKIPPED_REASON)):
        plan(artifacts=["gcore"], ptrace_allowed=False)


# --- the PATCH body -------------------------------------------------------------------


def pod_with(*ephemeral: dict[str, Any]) -> dict[str, Any]:
    pod = make_pod(containers=[make_container("app"), make_container("sidecar")])
    pod["metadata"]["resourceVersion"] = "41"
    if ephemeral:
        pod["spec"]["ephemeralContainers"] = list(ephemeral)
    return pod


DEBUGGER = {"name": "debugger-abc", "image": "busybox", "targetContainerName": "app"}


@pytest.mark.parametrize(
    "existing",
    [
        pytest.param((), id="first"),
        pytest.param((DEBUGGER,), id="after-kubectl-debug"),
    ],
)
def test_patch_keeps_existing_containers_and_adds_ours(
    existing: tuple[dict[str, Any], ...],
) -> None:
    pod = pod_with(*existing)
    before = copy.deepcopy(pod)
    container = plan()

    body = ephemeral_container_patch(pod, container)

    # No resourceVersion precondition: status updates would make it conflict for nothing.
    assert body == {"spec": {"ephemeralContainers": [*existing, container]}}
    assert pod == before  # the input is not mutated


@pytest.mark.parametrize(
    "existing",
    [
        pytest.param((plan(),), id="ours"),
        pytest.param((DEBUGGER, plan()), id="ours-after-another"),
        pytest.param((plan(trace_seconds=30),), id="ours-with-other-settings"),
    ],
)
def test_patch_is_none_when_the_container_exists(existing: tuple[dict[str, Any], ...]) -> None:
    assert ephemeral_container_patch(pod_with(*existing), plan()) is None


def test_patch_refuses_an_unknown_target() -> None:
    with pytest.raises(PlanError, match=r"targetContainerName.*'worker'"):
        ephemeral_container_patch(pod_with(), plan(target_container="worker"))


# --- Pod Security ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "allowed", "reason"),
    [
        pytest.param({}, True, "cluster default", id="absent"),
        pytest.param(
            {"pod-security.kubernetes.io/warn": "restricted"}, True, "no ", id="only-warn"
        ),
        pytest.param(
            {"pod-security.kubernetes.io/enforce": "privileged"},
            True,
            "privileged",
            id="privileged",
        ),
        pytest.param(
            {"pod-security.kubernetes.io/enforce": "baseline"}, False, "'baseline'", id="baseline"
        ),
        pytest.param(
            {"pod-security.kubernetes.io/enforce": "restricted"},
            False,
            "'restricted'",
            id="restricted",
        ),
        pytest.param(
            {"pod-security.kubernetes.io/enforce": "Baseline"}, False, "not valid", id="invalid"
        ),
    ],
)
def test_ptrace_by_pod_security_level(labels: dict[str, str], allowed: bool, reason: str) -> None:
    verdict, why = ptrace_allowed_by_pod_security(labels)

    assert verdict is allowed
    assert reason in why
    if not allowed:
        assert "SYS_PTRACE" in why or "restricted" in why


def test_the_evidence_ca_is_passed_as_text_only_when_given() -> None:
    from memwarden.capture.plan import ENV_UPLOAD_CA, plan_ephemeral_container

    common = {
        "incident": "inc-1",
        "incident_uid": "uid-1",
        "target_container": "app",
        "image": "img",
        "upload_url": "https://e/x",
        "upload_token": "t",
        "pprof_port": 6060,
        "trace_seconds": 1,
        "artifacts": ["heap"],
        "max_core_bytes": 1,
        "ptrace_allowed": True,
    }
    without = {e["name"] for e in plan_ephemeral_container(**common)["env"]}
    assert ENV_UPLOAD_CA not in without
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    env = {
        e["name"]: e["value"] for e in plan_ephemeral_container(**common, upload_ca_pem=pem)["env"]
    }
    assert env[ENV_UPLOAD_CA] == pem


# --- the debug container's identity (issue 12 item 11) ----------------------------------

NONROOT = {"runAsUser": 65532, "runAsGroup": 65532}


def _pod(
    *,
    container: dict[str, Any] | None = None,
    pod: dict[str, Any] | None = None,
    reported: dict[str, int] | None = None,
) -> dict[str, Any]:
    app = make_container("app")
    if container is not None:
        app["securityContext"] = container
    body = make_pod("target", containers=[app])
    if pod is not None:
        body["spec"]["securityContext"] = pod
    if reported is not None:
        body["status"] = {"containerStatuses": [{"name": "app", "user": {"linux": reported}}]}
    return body


IDENTITIES = [
    pytest.param(
        _pod(container=NONROOT),
        True,
        (0, 0, {"drop": ["ALL"], "add": ["SYS_PTRACE"]}, True),
        "root with only SYS_PTRACE",
        id="ptrace-allowed-root-with-SYS_PTRACE-whatever-the-target",
    ),
    pytest.param(
        _pod(container=NONROOT, pod={"runAsNonRoot": True}),
        True,
        (65532, 65532, {"drop": ["ALL"]}, False),
        "the pod requires runAsNonRoot",
        id="ptrace-allowed-but-pod-requires-non-root",
    ),
    pytest.param(
        _pod(container=NONROOT),
        False,
        (65532, 65532, {"drop": ["ALL"]}, False),
        "the target's user 65532 (from its securityContext)",
        id="target-container-user",
    ),
    pytest.param(
        _pod(container={"runAsUser": 1000}, pod={"runAsUser": 7, "runAsGroup": 8}),
        False,
        (1000, 8, {"drop": ["ALL"]}, False),
        "from its securityContext",
        id="container-user-pod-group",
    ),
    pytest.param(
        _pod(pod={"runAsUser": 7}),
        False,
        (7, None, {"drop": ["ALL"]}, False),
        "its group is unknown",
        id="pod-user-group-unknown",
    ),
    pytest.param(
        _pod(reported={"uid": 65532, "gid": 65532}),
        False,
        (65532, 65532, {"drop": ["ALL"]}, False),
        "the user its status reports",
        id="user-reported-by-the-kubelet",
    ),
    pytest.param(
        _pod(),
        False,
        (None, None, {"drop": ["ALL"]}, False),
        "the target's user is unknown (its image's default)",
        id="image-default-unknown",
    ),
    pytest.param(
        _pod(container={"runAsUser": 0, "capabilities": {"drop": ["NET_RAW"]}}),
        False,
        (0, None, {"drop": ["NET_RAW"]}, False),
        "the target's own capabilities",
        id="root-target-gets-its-own-capabilities",
    ),
]


@pytest.mark.parametrize(("pod", "ptrace", "expected", "reason"), IDENTITIES)
def test_debug_identity(
    pod: dict[str, Any],
    ptrace: bool,
    expected: tuple[int | None, int | None, dict[str, list[str]], bool],
    reason: str,
) -> None:
    identity = plan_debug_identity(
        pod=pod, target_container="app", ptrace_allowed=ptrace, ptrace_why="because"
    )

    assert (identity.user, identity.group, identity.capabilities, identity.ptrace) == expected
    assert reason in identity.reason


def test_the_plan_carries_the_identity_into_the_security_context() -> None:
    pod = _pod(container=NONROOT)
    target = plan_debug_identity(pod=pod, target_container="app", ptrace_allowed=False)
    root = plan_debug_identity(pod=pod, target_container="app", ptrace_allowed=True)

    as_target = plan(ptrace_allowed=False, identity=target)["securityContext"]
    as_root = plan(ptrace_allowed=True, identity=root)["securityContext"]

    assert as_target["runAsUser"] == 65532
    assert as_target["runAsGroup"] == 65532
    assert as_target["capabilities"] == {"drop": ["ALL"]}
    assert "runAsNonRoot" not in as_target
    assert as_root["runAsUser"] == 0
    assert as_root["runAsNonRoot"] is False  # a pod-level runAsNonRoot would refuse root
    assert as_root["capabilities"] == {"drop": ["ALL"], "add": ["SYS_PTRACE"]}
    assert as_root["allowPrivilegeEscalation"] is False
    assert root.status() == {
        "runAsUser": 0,
        "runAsGroup": 0,
        "capabilities": ["SYS_PTRACE"],
        "reason": root.reason,
    }


def test_without_an_identity_ptrace_means_root_not_the_images_non_root_user() -> None:
    """A non-root toolbox with SYS_PTRACE added has no effective capability: root it is."""
    security = plan(ptrace_allowed=True)["securityContext"]

    assert security["runAsUser"] == 0
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["SYS_PTRACE"]}


def test_an_identity_decides_ptrace_within_what_is_allowed() -> None:
    root = plan_debug_identity(pod=_pod(), target_container="app", ptrace_allowed=True)
    non_root_pod = _pod(container=NONROOT, pod={"runAsNonRoot": True})
    target = plan_debug_identity(pod=non_root_pod, target_container="app", ptrace_allowed=True)

    with pytest.raises(PlanError, match="identity"):
        plan(ptrace_allowed=False, identity=root)
    command = plan(ptrace_allowed=True, identity=target)["command"]
    assert "--no-ptrace" in command
    assert "gcore" not in flag(command, "--artifacts")


# --- ephemeral storage (issue 12 item 13) ------------------------------------------------


def _storage(limit: str | None = None, request: str | None = None) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if limit:
        resources["limits"] = {"ephemeral-storage": limit}
    if request:
        resources["requests"] = {"ephemeral-storage": request}
    return resources


def _pod_with(
    containers: list[dict[str, Any]],
    init: list[dict[str, Any]] | None = None,
    overhead: str | None = None,
) -> dict[str, Any]:
    built = [make_container(f"c{i}") | {"resources": r} for i, r in enumerate(containers)]
    pod = make_pod("target", containers=built)
    if init:
        pod["spec"]["initContainers"] = [
            make_container(f"i{i}") | extra for i, extra in enumerate(init)
        ]
    if overhead:
        pod["spec"]["overhead"] = {"ephemeral-storage": overhead}
    return pod


GiB = 1 << 30

ALLOWANCES = [
    pytest.param(_pod_with([_storage()]), None, id="no-limit"),
    pytest.param(_pod_with([_storage("2Gi")]), 2 * GiB, id="one-limit"),
    pytest.param(
        _pod_with([_storage("2Gi", "512Mi"), _storage("1Gi", "512Mi")]),
        2 * GiB,
        id="sum-of-limits-less-requests",
    ),
    pytest.param(
        _pod_with([_storage("1Gi")], init=[{"resources": _storage("4Gi")}]),
        4 * GiB,
        id="a-larger-init-container",
    ),
    pytest.param(
        _pod_with(
            [_storage("1Gi")], init=[{"resources": _storage("1Gi"), "restartPolicy": "Always"}]
        ),
        2 * GiB,
        id="a-sidecar-adds",
    ),
    pytest.param(_pod_with([_storage("1Gi")], overhead="1Gi"), 2 * GiB, id="overhead"),
    pytest.param(_pod_with([_storage("1Gi", "2Gi")]), 0, id="requests-above-limits"),
]


@pytest.mark.parametrize(("pod", "allowance"), ALLOWANCES)
def test_ephemeral_storage_allowance(pod: dict[str, Any], allowance: int | None) -> None:
    found, why = ephemeral_storage_allowance(pod)

    assert found == allowance
    assert "ephemeral-storage" in why


def test_the_allowance_reaches_the_toolbox() -> None:
    command = plan(ephemeral_storage_allowance=3 * GiB)["command"]
    args = cli.build_parser(only="capture").parse_args(command[1:])

    assert args.ephemeral_storage_allowance == 3 * GiB
    assert "--ephemeral-storage-allowance" not in plan()["command"]


def test_a_long_reason_is_cut_to_what_the_crd_admits() -> None:
    refusal = "refused by the API server: " + "x" * 5000
    identity = plan_debug_identity(
        pod=_pod(container=NONROOT),
        target_container="app",
        ptrace_allowed=False,
        ptrace_why=refusal,
    )

    reason = identity.status()["reason"]
    assert len(reason) == 1024
    assert reason.startswith("the target's user 65532")
