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
from dataclasses import dataclass
from typing import Any

from memwarden.artifacts import ALL_ARTIFACTS
from memwarden.quantity import QuantityError, parse_bytes

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
    "DebugIdentity",
    "PlanError",
    "ephemeral_container_name",
    "ephemeral_container_patch",
    "ephemeral_storage_allowance",
    "plan_debug_identity",
    "plan_ephemeral_container",
    "ptrace_allowed_by_pod_security",
]


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
    "--ephemeral-storage-allowance",
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


#: ``status.debugIdentity.reason``'s maxLength in the CRD.
_MAX_REASON = 1024


class PlanError(ValueError):
    """The plan cannot be made from these inputs; the message names the offending input."""


@dataclass(frozen=True)
class DebugIdentity:
    """Who the toolbox runs as, and why: the kernel lets it read the target's
    ``/proc/PID/smaps_rollup`` and ptrace it (gcore) only as the target's own uid and gid
    with at least the target's capabilities, or with ``CAP_SYS_PTRACE`` — which a non-root
    container never has, whatever its ``add`` says (kubernetes/kubernetes issue 56374)."""

    #: ``runAsUser`` / ``runAsGroup``; None: not set (the toolbox image's user).
    user: int | None
    group: int | None
    #: The ``capabilities`` of the securityContext.
    capabilities: Mapping[str, Sequence[str]]
    #: CAP_SYS_PTRACE is effective (root with SYS_PTRACE added): gcore is planned.
    ptrace: bool
    reason: str
    #: Set ``runAsNonRoot: false`` (root with ptrace where the pod asks nothing else).
    root: bool = False

    def status(self) -> dict[str, Any]:
        """The incident's ``status.debugIdentity``."""
        reason = (
            self.reason if len(self.reason) <= _MAX_REASON else self.reason[: _MAX_REASON - 1] + "…"
        )
        out: dict[str, Any] = {
            "capabilities": list(self.capabilities.get("add") or []),
            "reason": reason,  # may quote an API server refusal: the CRD caps it
        }
        if self.user is not None:
            out["runAsUser"] = self.user
        if self.group is not None:
            out["runAsGroup"] = self.group
        return out


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _target_user(
    pod: Mapping[str, Any], container: Mapping[str, Any], name: str
) -> tuple[int | None, int | None, str]:
    """The target's uid and gid as the API shows them, and where they come from."""
    own = container.get("securityContext") or {}
    shared = (pod.get("spec") or {}).get("securityContext") or {}
    uid, uid_from = _int(own.get("runAsUser")), "its securityContext"
    if uid is None:
        uid, uid_from = _int(shared.get("runAsUser")), "the pod's securityContext"
    gid = _int(own.get("runAsGroup"))
    if gid is None:
        gid = _int(shared.get("runAsGroup"))
    if uid is None or gid is None:
        # The kubelet reports the process's identity (KEP-3619), image default included.
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        for entry in statuses:
            if isinstance(entry, Mapping) and entry.get("name") == name:
                linux = (entry.get("user") or {}).get("linux") or {}
                if uid is None and _int(linux.get("uid")) is not None:
                    uid, uid_from = _int(linux.get("uid")), "the user its status reports"
                if gid is None:
                    gid = _int(linux.get("gid"))
    return uid, gid, uid_from


def plan_debug_identity(
    *,
    pod: Mapping[str, Any],
    target_container: str,
    ptrace_allowed: bool,
    ptrace_why: str = "",
) -> DebugIdentity:
    """The debug container's user and capabilities for capturing ``target_container``.

    Root with only ``SYS_PTRACE`` where Pod Security allows it (``ptrace_allowed``) and the
    pod does not demand ``runAsNonRoot``: it reads and ptraces any user's process, on nodes
    with Yama ``ptrace_scope=1`` too. Otherwise the target's own identity, never more:
    its uid and gid (container securityContext, else the pod's, else the user the kubelet
    reports), with no capability for a non-root target and the target's own capabilities
    for a root one (the kernel also wants the tracer's capabilities to cover the target's);
    the same uid lets the toolbox read ``/proc`` but, without ``SYS_PTRACE``, gcore stays
    out of the plan. When the target's user is unknown, the toolbox runs as its image's
    user, and says so.
    """
    spec = pod.get("spec") or {}
    containers = {c.get("name"): c for c in spec.get("containers") or [] if isinstance(c, Mapping)}
    container = containers.get(target_container) or {}
    own = container.get("securityContext") or {}
    non_root = own.get("runAsNonRoot")
    if non_root is None:
        non_root = (spec.get("securityContext") or {}).get("runAsNonRoot")
    if ptrace_allowed and non_root is not True:
        return DebugIdentity(
            user=0,
            group=0,
            capabilities={"drop": ["ALL"], "add": ["SYS_PTRACE"]},
            ptrace=True,
            root=True,
            reason="root with only SYS_PTRACE, which reads and ptraces a process of any "
            f"user ({ptrace_why or 'Pod Security allows it'})",
        )
    why_not = "the pod requires runAsNonRoot" if ptrace_allowed else ptrace_why
    why_not = why_not or "SYS_PTRACE not allowed"
    uid, gid, uid_from = _target_user(pod, container, target_container)
    if uid is None:
        return DebugIdentity(
            user=None,
            group=gid,
            capabilities={"drop": ["ALL"]},
            ptrace=False,
            reason=f"the target's user is unknown (its image's default): the toolbox runs "
            f"as its own image's user, and reads the target's /proc only if they match "
            f"({why_not})",
        )
    group_note = "" if gid is not None else "; its group is unknown"
    if uid == 0:
        # The target's own capabilities (its securityContext's, else the runtime's default
        # set): the kernel refuses a tracer whose capabilities do not cover the target's.
        capabilities = {k: list(v) for k, v in (own.get("capabilities") or {}).items()}
        return DebugIdentity(
            user=0,
            group=gid,
            capabilities=capabilities,
            ptrace=False,
            reason=f"the target's user 0 (from {uid_from}) with the target's own "
            f"capabilities{group_note} ({why_not})",
        )
    return DebugIdentity(
        user=uid,
        group=gid,
        capabilities={"drop": ["ALL"]},
        ptrace=False,
        reason=f"the target's user {uid} (from {uid_from}){group_note}, no capability ({why_not})",
    )


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


def _resource(container: Mapping[str, Any], kind: str) -> int | None:
    value = ((container.get("resources") or {}).get(kind) or {}).get("ephemeral-storage")
    if value is None:
        return None
    try:
        return parse_bytes(value)
    except QuantityError:
        return None


def ephemeral_storage_allowance(pod: Mapping[str, Any]) -> tuple[int | None, str]:
    """Bytes a capture may write into the pod's writable layers, and how that was reckoned;
    None when the pod has no ephemeral-storage limit (then only the node's disk bounds it).

    The kubelet evicts a pod whose disk use (every container's writable layer, the debug
    container's included, plus logs and disk-backed emptyDirs) passes its limit: the sum
    of its containers' ``ephemeral-storage`` limits (regular containers and sidecars, or
    the largest init container's if more) plus the pod's overhead. The real use is visible
    neither through the API nor from inside the pod, so each container is counted as using
    its ``ephemeral-storage`` request, its owner's own estimate (0 without one): the gap
    between requests and limits is the headroom a capture may take. A container that sets
    only a limit gets a request equal to it (API defaulting), which leaves none.
    """
    spec = pod.get("spec") or {}
    running = [*(spec.get("containers") or [])]
    running += [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    limits = [_resource(c, "limits") for c in running]
    init = [_resource(c, "limits") for c in spec.get("initContainers") or []]
    if all(limit is None for limit in (*limits, *init)):
        return None, "the pod sets no ephemeral-storage limit"
    total = max(sum(v or 0 for v in limits), max((v or 0 for v in init), default=0))
    overhead = _resource({"resources": {"limits": spec.get("overhead") or {}}}, "limits") or 0
    total += overhead
    requested = sum(_resource(c, "requests") or 0 for c in running)
    allowance = max(0, total - requested)
    return allowance, (
        f"the pod's ephemeral-storage limit {total} bytes less its containers' requests "
        f"{requested} bytes"
    )


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
    identity: DebugIdentity | None = None,
    ephemeral_storage_allowance: int | None = None,
) -> dict[str, Any]:
    """The toolbox container for ``incident``, as a ``V1EphemeralContainer`` dict.

    Deterministic: the same inputs give an equal dict (artifacts in collection order,
    duplicates dropped). Without ptrace, gcore is left out (the incident should record it
    as skipped with :data:`PTRACE_SKIPPED_REASON`) and the toolbox runs with
    ``--no-ptrace``, so a forbidden core never fails the capture.
    No ports, resources, probes or lifecycle: the API server refuses them on ephemeral
    containers (and the toolbox's memory counts against the pod, so it streams).
    ``identity`` (from :func:`plan_debug_identity`) sets the user and capabilities, and
    whether ptrace is planned; without it, those of a target whose user is unknown.
    """
    if identity is None:
        identity = plan_debug_identity(
            pod={}, target_container=target_container, ptrace_allowed=ptrace_allowed
        )
    if identity.ptrace and not ptrace_allowed:
        raise PlanError("identity: has SYS_PTRACE, which ptrace_allowed says is not allowed")
    # The identity may forgo ptrace where it is allowed (a pod requiring runAsNonRoot).
    ptrace_allowed = identity.ptrace
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
    if ephemeral_storage_allowance is not None:
        command += ["--ephemeral-storage-allowance", str(ephemeral_storage_allowance)]
    security: dict[str, Any] = {
        "privileged": False,
        "allowPrivilegeEscalation": False,
    }
    if identity.capabilities:
        # SYS_PTRACE and nothing else (or the target's own): gcore attaches with ptrace, and
        # reading another process's smaps_rollup and /proc/PID/root needs ptrace read access.
        security["capabilities"] = {k: list(v) for k, v in identity.capabilities.items()}
    if identity.user is not None:
        security["runAsUser"] = identity.user
    if identity.group is not None:
        security["runAsGroup"] = identity.group
    if identity.root:
        security["runAsNonRoot"] = False
    # Admitted by every Pod Security level; the runtime's default profile allows ptrace(2)
    # (and process_vm_readv) on current kernels.
    security["seccompProfile"] = {"type": "RuntimeDefault"}
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
        "securityContext": security,
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
