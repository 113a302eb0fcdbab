"""Pod status as a kubelet reports it, built from what the simulator observed. Pure.

Test infrastructure. ``build_pod_status`` takes the pod (its spec and current status), a
``PodView`` of the simulator's containers, the status it wrote last (for condition
transition times) and ``now``, and returns the complete new ``status``. What the
simulator does not own (``qosClass``, conditions written by others such as
``PodScheduled`` or ``DisruptionTarget``, ``nominatedNodeName``, ...) is carried over from
the pod. The phase follows the kubelet's ``getPhase``; a terminal phase never changes.

Also here: the small rules the pod runner applies (exit codes, termination reasons,
restart policy, back-off, termination messages), so they are tested without processes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "OWNED_CONDITIONS",
    "ContainerState",
    "ContainerView",
    "PodView",
    "ResizeCondition",
    "Running",
    "Terminated",
    "Waiting",
    "backoff_seconds",
    "build_pod_status",
    "exit_code_of",
    "is_sidecar",
    "pod_phase",
    "rfc3339",
    "should_restart",
    "terminated_reason",
    "termination_message",
]

#: The pod conditions the kubelet (here: the simulator) writes; others are carried over.
OWNED_CONDITIONS = (
    "PodReadyToStartContainers",
    "Initialized",
    "Ready",
    "ContainersReady",
    "PodResizePending",
    "PodResizeInProgress",
)

#: The kubelet's cap on a termination message.
MAX_TERMINATION_MESSAGE = 4096
#: FallbackToLogsOnError: the last lines / bytes of the log (the kubelet's numbers).
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048

TERMINAL_PHASES = ("Succeeded", "Failed")


def rfc3339(moment: dt.datetime) -> str:
    """A ``metav1.Time``: UTC, second precision (what the API server stores)."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- container states --------------------------------------------------------------------


@dataclass(frozen=True)
class Waiting:
    reason: str
    message: str = ""


@dataclass(frozen=True)
class Running:
    started_at: dt.datetime


@dataclass(frozen=True)
class Terminated:
    exit_code: int
    reason: str
    finished_at: dt.datetime
    started_at: dt.datetime | None = None
    message: str = ""
    signal: int | None = None
    container_id: str | None = None


ContainerState = Waiting | Running | Terminated


@dataclass(frozen=True)
class ContainerView:
    """One container as the simulator sees it. No probes run: running means ready."""

    name: str
    image: str
    state: ContainerState
    last_state: Terminated | None = None
    restart_count: int = 0
    container_id: str | None = None
    image_id: str = ""
    #: ``containerStatuses[].resources``: those in effect while it runs, else those allocated.
    resources: Mapping[str, Any] | None = None
    #: ``containerStatuses[].allocatedResources``: the allocated requests.
    allocated_resources: Mapping[str, Any] | None = None
    #: (uid, gid) of its process, reported as ``user.linux`` (KEP-3619) while it runs.
    user: tuple[int, int] | None = None

    @property
    def running(self) -> bool:
        return isinstance(self.state, Running)


@dataclass(frozen=True)
class ResizeCondition:
    """``PodResizePending`` or ``PodResizeInProgress`` as the kubelet's status manager keeps
    it: always ``True`` while present; gone when the resize is done or withdrawn."""

    kind: str
    observed_generation: int
    last_transition: dt.datetime
    last_probe: dt.datetime
    reason: str = ""
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.kind,
            "status": "True",
            "lastProbeTime": rfc3339(self.last_probe),
            "lastTransitionTime": rfc3339(self.last_transition),
        }
        if self.observed_generation:
            out["observedGeneration"] = self.observed_generation
        if self.reason:
            out["reason"] = self.reason
        if self.message:
            out["message"] = self.message
        return out


@dataclass(frozen=True)
class PodView:
    host_ip: str
    pod_ip: str | None
    start_time: dt.datetime | None
    init_containers: tuple[ContainerView, ...] = ()
    containers: tuple[ContainerView, ...] = ()
    ephemeral_containers: tuple[ContainerView, ...] = ()
    #: The pod is being deleted and all its processes have stopped: report a terminal phase.
    terminal: bool = False
    #: Init containers completed at some point (a pod never goes back to uninitialized).
    initialized: bool = False
    #: In-place resize conditions (none on a terminal pod).
    resize_conditions: tuple[ResizeCondition, ...] = ()


# --- small rules -------------------------------------------------------------------------


def exit_code_of(returncode: int) -> int:
    """A container exit code from ``Popen.returncode`` (killed by signal N -> 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def terminated_reason(exit_code: int, *, oom_killed: bool = False) -> str:
    """``OOMKilled`` when the memory limit killed it, else ``Completed`` / ``Error``."""
    if oom_killed:
        return "OOMKilled"
    return "Completed" if exit_code == 0 else "Error"


def should_restart(restart_policy: str, exit_code: int) -> bool:
    """The pod's ``restartPolicy`` applied to one container exit."""
    if restart_policy == "Never":
        return False
    if restart_policy == "OnFailure":
        return exit_code != 0
    return True


def backoff_seconds(failures: int, *, base: float, cap: float) -> float:
    """Delay before restart number ``failures`` (1-based): base × 2^(n-1), capped."""
    if failures <= 0:
        return 0.0
    return float(min(cap, base * 2 ** min(failures - 1, 30)))


def termination_message(*, policy: str, file_bytes: bytes, log_tail: bytes, exit_code: int) -> str:
    """The message the kubelet reports for a terminated container.

    The file's content (at most 4096 bytes); with ``FallbackToLogsOnError``, an empty
    file and a failed container, the tail of its log (80 lines, 2048 bytes).
    """
    data = file_bytes[:MAX_TERMINATION_MESSAGE]
    if not data and policy == "FallbackToLogsOnError" and exit_code != 0:
        lines = log_tail.splitlines(keepends=True)[-FALLBACK_LOG_LINES:]
        data = b"".join(lines)[-FALLBACK_LOG_BYTES:]
    return data.decode("utf-8", errors="replace")


def is_sidecar(init_container: Mapping[str, Any]) -> bool:
    """A restartable init container (``restartPolicy: Always``): a sidecar."""
    return init_container.get("restartPolicy") == "Always"


# --- phase -------------------------------------------------------------------------------


def _by_name(views: Sequence[ContainerView]) -> dict[str, ContainerView]:
    return {view.name: view for view in views}


def pod_phase(spec: Mapping[str, Any], view: PodView, *, previous_phase: str = "") -> str:
    """The kubelet's ``getPhase``; a terminal phase is never left."""
    if previous_phase in TERMINAL_PHASES:
        return previous_phase
    restart_policy = spec.get("restartPolicy", "Always")
    init_views = _by_name(view.init_containers)
    pending_regular_init = 0
    pending_sidecars = 0
    failed_init = 0
    unknown = running = waiting = stopped = succeeded = 0
    for container in spec.get("initContainers") or []:
        status = init_views.get(container["name"])
        if is_sidecar(container):
            if status is None:
                unknown += 1
                pending_sidecars += 1
            elif isinstance(status.state, Running):
                running += 1
            elif isinstance(status.state, Waiting) and status.last_state is None:
                pending_sidecars += 1
                waiting += 1
            continue
        if status is None or isinstance(status.state, Running):
            pending_regular_init += 1
        elif isinstance(status.state, Terminated):
            failed_init += status.state.exit_code != 0
        elif status.last_state is not None:
            failed_init += status.last_state.exit_code != 0
        else:
            pending_regular_init += 1
    views = _by_name(view.containers)
    for container in spec.get("containers") or []:
        status = views.get(container["name"])
        if status is None:
            unknown += 1
        elif isinstance(status.state, Running):
            running += 1
        elif isinstance(status.state, Terminated):
            stopped += 1
            succeeded += status.state.exit_code == 0
        elif status.last_state is not None:
            stopped += 1
        else:
            waiting += 1

    if failed_init and restart_policy == "Never":
        return "Failed"
    if pending_regular_init or (pending_sidecars and not view.initialized):
        return "Pending"
    if waiting:
        return "Pending"
    if running and not unknown:
        return "Running"
    if not running and stopped and not unknown:
        if view.terminal:
            return "Succeeded" if stopped == succeeded else "Failed"
        if restart_policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        if restart_policy == "Never":
            return "Failed"
        return "Running"
    return "Pending"


# --- status ------------------------------------------------------------------------------


def _state_dict(state: ContainerState) -> dict[str, Any]:
    if isinstance(state, Waiting):
        waiting: dict[str, Any] = {"reason": state.reason}
        if state.message:
            waiting["message"] = state.message
        return {"waiting": waiting}
    if isinstance(state, Running):
        return {"running": {"startedAt": rfc3339(state.started_at)}}
    return {"terminated": _terminated_dict(state)}


def _terminated_dict(state: Terminated) -> dict[str, Any]:
    out: dict[str, Any] = {"exitCode": state.exit_code, "reason": state.reason}
    if state.signal is not None:
        out["signal"] = state.signal
    if state.message:
        out["message"] = state.message
    if state.started_at is not None:
        out["startedAt"] = rfc3339(state.started_at)
    out["finishedAt"] = rfc3339(state.finished_at)
    if state.container_id:
        out["containerID"] = state.container_id
    return out


def container_status(view: ContainerView, *, ephemeral: bool = False) -> dict[str, Any]:
    """One ``containerStatuses[]`` entry."""
    out: dict[str, Any] = {
        "name": view.name,
        "image": view.image,
        "imageID": view.image_id,
        "ready": view.running and not ephemeral,
        "started": view.running,
        "restartCount": view.restart_count,
        "state": _state_dict(view.state),
        "lastState": {"terminated": _terminated_dict(view.last_state)} if view.last_state else {},
    }
    if view.container_id:
        out["containerID"] = view.container_id
    if view.resources is not None and not ephemeral:
        out["resources"] = dict(view.resources)
    if view.allocated_resources and not ephemeral:
        out["allocatedResources"] = dict(view.allocated_resources)
    if view.user is not None and view.running:
        uid, gid = view.user
        out["user"] = {"linux": {"uid": uid, "gid": gid, "supplementalGroups": [gid]}}
    return out


def _condition(
    kind: str,
    ok: bool,
    *,
    reason: str = "",
    message: str = "",
    previous: Mapping[str, Mapping[str, Any]],
    now: dt.datetime,
    generation: int | None,
) -> dict[str, Any]:
    status = "True" if ok else "False"
    before = previous.get(kind)
    since = (
        str(before["lastTransitionTime"])
        if before and before.get("status") == status and before.get("lastTransitionTime")
        else rfc3339(now)
    )
    out: dict[str, Any] = {"type": kind, "status": status, "lastTransitionTime": since}
    if reason and not ok:
        out["reason"] = reason
    if message and not ok:
        out["message"] = message
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def _names(names: Sequence[str]) -> str:
    return "[" + " ".join(names) + "]"


def build_pod_status(
    *,
    pod: Mapping[str, Any],
    view: PodView,
    previous: Mapping[str, Any] | None,
    now: dt.datetime,
) -> dict[str, Any]:
    """The pod's complete new ``status``.

    ``previous`` is the status the simulator wrote last (or the pod's status when it has
    written none): conditions keep their ``lastTransitionTime`` while unchanged.
    """
    spec = pod.get("spec") or {}
    current: Mapping[str, Any] = pod.get("status") or {}
    generation = (pod.get("metadata") or {}).get("generation")
    previous = previous if previous is not None else current
    previous_conditions = {c.get("type", ""): c for c in previous.get("conditions") or []}
    phase = pod_phase(spec, view, previous_phase=str(current.get("phase", "")))

    init_specs = spec.get("initContainers") or []
    init_views = _by_name(view.init_containers)
    incomplete = []
    for container in init_specs:
        status = init_views.get(container["name"])
        if is_sidecar(container):
            done = status is not None and status.running
        else:
            done = (
                status is not None
                and isinstance(status.state, Terminated)
                and status.state.exit_code == 0
            )
        if not done:
            incomplete.append(container["name"])
    initialized = view.initialized or not incomplete

    regular = _by_name(view.containers)
    unready = [
        c["name"]
        for c in spec.get("containers") or []
        if not (regular.get(c["name"]) or _NONE).running
    ]
    unready += [
        c["name"]
        for c in init_specs
        if is_sidecar(c) and not (init_views.get(c["name"]) or _NONE).running
    ]
    containers_ready = not unready and phase not in TERMINAL_PHASES
    if phase in TERMINAL_PHASES:
        not_ready_reason, not_ready_message = "PodCompleted", ""
    else:
        not_ready_reason = "ContainersNotReady"
        not_ready_message = f"containers with unready status: {_names(unready)}"

    foreign = [
        dict(c) for c in current.get("conditions") or [] if c.get("type") not in OWNED_CONDITIONS
    ]
    foreign_by_type = {c.get("type"): c for c in foreign}
    gates = [str(g.get("conditionType")) for g in spec.get("readinessGates") or []]
    missing_gates = [g for g in gates if (foreign_by_type.get(g) or {}).get("status") != "True"]
    ready = containers_ready and not missing_gates
    ready_reason, ready_message = not_ready_reason, not_ready_message
    if containers_ready and missing_gates:
        ready_reason = "ReadinessGatesNotReady"
        ready_message = f"the status of pod readiness gate {missing_gates[0]!r} is not True"

    def condition(kind: str, ok: bool, reason: str = "", message: str = "") -> dict[str, Any]:
        return _condition(
            kind,
            ok,
            reason=reason,
            message=message,
            previous=previous_conditions,
            now=now,
            generation=generation,
        )

    conditions = [
        condition("PodReadyToStartContainers", view.pod_ip is not None and not view.terminal),
        condition(
            "Initialized",
            initialized,
            "ContainersNotInitialized",
            f"containers with incomplete status: {_names(incomplete)}",
        ),
        condition("Ready", ready, ready_reason, ready_message),
        condition("ContainersReady", containers_ready, not_ready_reason, not_ready_message),
        *(c.as_dict() for c in view.resize_conditions if phase not in TERMINAL_PHASES),
        *foreign,
    ]

    owned: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": view.host_ip,
        "hostIPs": [{"ip": view.host_ip}],
        "containerStatuses": [container_status(v) for v in view.containers],
    }
    if view.pod_ip:
        owned["podIP"] = view.pod_ip
        owned["podIPs"] = [{"ip": view.pod_ip}]
    if view.start_time is not None:
        owned["startTime"] = rfc3339(view.start_time)
    if view.init_containers:
        owned["initContainerStatuses"] = [container_status(v) for v in view.init_containers]
    if view.ephemeral_containers:
        owned["ephemeralContainerStatuses"] = [
            container_status(v, ephemeral=True) for v in view.ephemeral_containers
        ]
    if generation is not None:
        owned["observedGeneration"] = generation

    carried = {
        key: value
        for key, value in current.items()
        if key
        not in {
            *owned,
            "podIP",
            "podIPs",
            "startTime",
            "initContainerStatuses",
            "ephemeralContainerStatuses",
        }
    }
    return {**carried, **owned}


_NONE = ContainerView(name="", image="", state=Waiting(reason="ContainerCreating"))
