"""The capture plan: which ephemeral container to add to a pod for one incident.

Pure: strings and dicts in, a ``V1EphemeralContainer`` (as a camelCase dict) and a PATCH
body out. No Kubernetes client, kopf or network import: the incident handler decides with
these functions and applies the result with the kube adapter.

This module is also the contract with the toolbox (:mod:`memwarden.capture.toolbox`): the
environment variables and flags it reads are named here once, and the toolbox imports them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "ALL_ARTIFACTS",
    "ENV_TARGET_PID",
    "ENV_UPLOAD_CA",
    "ENV_UPLOAD_TOKEN",
    "ENV_UPLOAD_URL",
    "NAME_PREFIX",
    "POD_SECURITY_ENFORCE_LABEL",
    "PTRACE_SKIPPED_REASON",
    "TERMINATION_MESSAGE_PATH",
    "TOOLBOX_COMMAND",
    "TOOLBOX_ENV",
    "TOOLBOX_FLAGS",
    "PlanError",
    "ephemeral_container_name",
    "ephemeral_container_patch",
    "plan_ephemeral_container",
    "ptrace_allowed_by_pod_security",
]

#: Every artifact the toolbox can collect, in collection order. Mirrors
#: ``memwarden.api.ALL_ARTIFACTS`` (a unit test fails on drift); not imported from there so
#: the toolbox image does not need pydantic.
ALL_ARTIFACTS: tuple[str, ...] = (
    "heap",
    "allocs",
    "goroutine",
    "trace",
    "gcore",
    "smaps",
    "cgroup",
)

ENV_UPLOAD_URL = "MEMWARDEN_UPLOAD_URL"
ENV_UPLOAD_TOKEN = "MEMWARDEN_UPLOAD_TOKEN"
ENV_UPLOAD_CA = "MEMWARDEN_UPLOAD_CA"
ENV_TARGET_PID = "MEMWARDEN_TARGET_PID"

#: What the plan gives the toolbox, and all that memwarden's own service account may give
#: it (:mod:`memwarden.reach` admits nothing else): the command, the flags it passes (each
#: with a value, except ``--no-ptrace``) and the environment. A flag or variable the plan
#: starts passing goes here too, or the API server refuses the debug container.
TOOLBOX_COMMAND: tuple[str, str] = ("memwarden", "capture")
TOOLBOX_FLAGS: tuple[str, ...] = (
    "--incident",
    "--pprof-port",
    "--trace-seconds",
    "--artifacts",
    "--max-core-bytes",
    "--termination-log",
    "--no-ptrace",
)
TOOLBOX_ENV: tuple[str, ...] = (ENV_UPLOAD_URL, ENV_UPLOAD_TOKEN, ENV_UPLOAD_CA)

#: Recorded for gcore whenever ptrace is not available, by plan or by the kernel's EPERM.
PTRACE_SKIPPED_REASON = "SYS_PTRACE not granted (Pod Security)"

POD_SECURITY_ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"

#: The ephemeral container's name is this prefix and a hash of the incident's UID: the same
#: after an operator restart, so a retried capture finds the container it already added
#: instead of adding a second one (they cannot be removed); and new for an incident deleted
#: and created again under the same name, whose capture must run a toolbox of its own.
NAME_PREFIX = "memwarden-"
_HASH_CHARS = 12  # 48 bits: no collision among the handful of incidents one pod ever has

TERMINATION_MESSAGE_PATH = "/dev/termination-log"
_MAX_NAME = 63  # a DNS label


class PlanError(ValueError):
    """The plan cannot be made from these inputs; the message names the offending input."""


def ephemeral_container_name(incident_uid: str) -> str:
    """``memwarden-<12 hex>`` from the incident's UID: stable for one incident, a valid DNS
    label (22 characters)."""
    if not incident_uid:
        raise PlanError("incident_uid: must not be empty")
    digest = hashlib.sha256(incident_uid.encode("utf-8")).hexdigest()[:_HASH_CHARS]
    name = NAME_PREFIX + digest
    assert len(name) <= _MAX_NAME
    return name


def ptrace_allowed_by_pod_security(namespace_labels: Mapping[str, str]) -> tuple[bool, str]:
    """Whether the namespace's enforced Pod Security level admits ``SYS_PTRACE``, and why.

    Only ``privileged`` admits it; ``baseline`` and ``restricted`` both forbid adding it.
    An unknown level is enforced as ``restricted`` by the API server, so it forbids too.
    Without the label the cluster's default level applies, which labels cannot show: we
    answer allowed, and a 403 on the PATCH is the handler's cue to retry without ptrace.
    """
    level = namespace_labels.get(POD_SECURITY_ENFORCE_LABEL)
    if level is None:
        return True, f"no {POD_SECURITY_ENFORCE_LABEL} label (cluster default applies)"
    if level == "privileged":
        return True, "Pod Security level 'privileged' admits SYS_PTRACE"
    if level in ("baseline", "restricted"):
        return False, f"Pod Security level '{level}' forbids adding SYS_PTRACE"
    return False, f"Pod Security level {level!r} is not valid and is enforced as 'restricted'"


def _validate(
    *,
    incident: str,
    target_container: str,
    image: str,
    pprof_port: int,
    trace_seconds: int,
    artifacts: Sequence[str],
    max_core_bytes: int,
) -> None:
    if not incident:
        raise PlanError("incident: must not be empty")
    if not target_container:
        raise PlanError("target_container: must not be empty")
    if not image:
        raise PlanError("image: must not be empty")
    if not 1 <= pprof_port <= 65535:
        raise PlanError(f"pprof_port: {pprof_port} is not a TCP port")
    if trace_seconds < 1:
        raise PlanError(f"trace_seconds: {trace_seconds} must be at least 1")
    if max_core_bytes < 0:
        raise PlanError(f"max_core_bytes: {max_core_bytes} must not be negative")
    unknown = sorted(set(artifacts) - set(ALL_ARTIFACTS))
    if unknown:
        raise PlanError(f"artifacts: unknown {', '.join(unknown)} (known: {ALL_ARTIFACTS})")
    if not artifacts:
        raise PlanError("artifacts: must name at least one artifact")


def plan_ephemeral_container(
    *,
    incident: str,
    incident_uid: str,
    target_container: str,
    image: str,
    upload_url: str,
    upload_token: str,
    pprof_port: int,
    trace_seconds: int,
    artifacts: Sequence[str],
    max_core_bytes: int,
    ptrace_allowed: bool,
    upload_ca_pem: str | None = None,
) -> dict[str, Any]:
    """The toolbox container for ``incident``, as a ``V1EphemeralContainer`` dict.

    Deterministic: the same inputs give an equal dict (artifacts in collection order,
    duplicates dropped). Without ptrace, gcore is left out (the incident should record it
    as skipped with :data:`PTRACE_SKIPPED_REASON`) and the toolbox runs with
    ``--no-ptrace``, so a forbidden core never fails the capture.
    No ports, resources, probes or lifecycle: the API server refuses them on ephemeral
    containers (and the toolbox's memory counts against the pod, so it streams).
    """
    _validate(
        incident=incident,
        target_container=target_container,
        image=image,
        pprof_port=pprof_port,
        trace_seconds=trace_seconds,
        artifacts=artifacts,
        max_core_bytes=max_core_bytes,
    )
    chosen = [a for a in ALL_ARTIFACTS if a in artifacts and (ptrace_allowed or a != "gcore")]
    if not chosen:
        raise PlanError(f"artifacts: only gcore was asked for, and {PTRACE_SKIPPED_REASON}")
    command = [
        *TOOLBOX_COMMAND,
        "--incident",
        incident,
        "--pprof-port",
        str(pprof_port),
        "--trace-seconds",
        str(trace_seconds),
        "--artifacts",
        ",".join(chosen),
        "--max-core-bytes",
        str(max_core_bytes),
        "--termination-log",
        TERMINATION_MESSAGE_PATH,
    ]
    if not ptrace_allowed:
        command.append("--no-ptrace")
    capabilities: dict[str, list[str]] = {"drop": ["ALL"]}
    if ptrace_allowed:
        # SYS_PTRACE and nothing else: gcore attaches with ptrace, and reading another
        # process's smaps_rollup and /proc/PID/root needs ptrace read access.
        capabilities["add"] = ["SYS_PTRACE"]
    return {
        "name": ephemeral_container_name(incident_uid),
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "targetContainerName": target_container,
        "command": command,
        "env": [
            {"name": ENV_UPLOAD_URL, "value": upload_url},
            # The token is readable by anyone who can read this pod's spec, and ephemeral
            # containers can never be removed. Acceptable because it is scoped to this one
            # incident, short-lived and write-only (it can upload this incident's bundle,
            # nothing else); a Secret would need RBAC on Secrets in every namespace.
            {"name": ENV_UPLOAD_TOKEN, "value": upload_token},
            # The evidence API's CA, as text: an ephemeral container cannot mount a volume
            # the pod does not already have.
            *([{"name": ENV_UPLOAD_CA, "value": upload_ca_pem}] if upload_ca_pem else []),
        ],
        "securityContext": {
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "capabilities": capabilities,
            # Admitted by every Pod Security level; the runtime's default profile allows
            # ptrace(2) when CAP_SYS_PTRACE is held.
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "File",
        "stdin": False,
        "tty": False,
    }


def ephemeral_container_patch(
    pod: Mapping[str, Any], container: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The body for PATCH ``pods/NAME/ephemeralcontainers``; None if already added.

    Send it as a strategic merge patch: ephemeral containers merge by name, so a body
    planned on a slightly stale pod still keeps a container someone else added meanwhile.
    The body lists the existing ones too, so as a JSON merge patch (which replaces the
    list) it is right for the pod it was planned on, and on a stale pod the API server
    refuses it (ephemeral containers cannot be removed) instead of losing one. No
    ``resourceVersion`` precondition: status updates (the scheduler's, the kubelet's) would
    make it conflict for nothing.
    """
    spec = pod.get("spec") or {}
    existing = [dict(c) for c in spec.get("ephemeralContainers") or []]
    name = container.get("name")
    if any(c.get("name") == name for c in existing):
        return None
    target = container.get("targetContainerName")
    if target is not None and target not in {c.get("name") for c in spec.get("containers") or []}:
        raise PlanError(f"targetContainerName: the pod has no container {target!r}")
    return {"spec": {"ephemeralContainers": [*existing, dict(container)]}}
