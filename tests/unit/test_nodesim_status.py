"""nodesim.status: pod status as a kubelet reports it, and the runner's small rules (pure).

The node simulator is test infrastructure (hack/nodesim). Phases follow the kubelet's
``getPhase``; conditions and container statuses have the shapes that controllers and
memwarden read (Ready, restartCount, lastState.terminated.reason == OOMKilled, ...).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from nodesim.status import (
    ContainerView,
    PodView,
    Running,
    Terminated,
    Waiting,
    backoff_seconds,
    build_pod_status,
    exit_code_of,
    pod_phase,
    should_restart,
    terminated_reason,
    termination_message,
)

from memwarden_testing.builders import make_container, make_pod

pytestmark = pytest.mark.unit

T0 = dt.datetime(2026, 11, 25, 18, 0, 0, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(seconds=30)
NOW = T0 + dt.timedelta(minutes=5)


def running(name: str = "app", **kw: Any) -> ContainerView:
    return ContainerView(name=name, image="memwarden/leaky:dev", state=Running(T0), **kw)


def waiting(name: str = "app", reason: str = "ContainerCreating", **kw: Any) -> ContainerView:
    return ContainerView(name=name, image="memwarden/leaky:dev", state=Waiting(reason), **kw)


def exited(code: int, reason: str = "") -> Terminated:
    return Terminated(
        exit_code=code,
        reason=reason or terminated_reason(code),
        started_at=T0,
        finished_at=T1,
        container_id="nodesim://c1",
    )


def stopped(name: str = "app", code: int = 0, **kw: Any) -> ContainerView:
    return ContainerView(name=name, image="memwarden/leaky:dev", state=exited(code), **kw)


def crashlooping(name: str = "app", code: int = 1) -> ContainerView:
    return waiting(name, "CrashLoopBackOff", last_state=exited(code), restart_count=1)


def spec(
    *names: str, policy: str = "Always", init: tuple[dict[str, Any], ...] = ()
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "restartPolicy": policy,
        "containers": [make_container(n) for n in names or ("app",)],
    }
    if init:
        out["initContainers"] = list(init)
    return out


def view(
    containers: tuple[ContainerView, ...],
    *,
    init: tuple[ContainerView, ...] = (),
    terminal: bool = False,
    initialized: bool = False,
) -> PodView:
    return PodView(
        host_ip="127.0.0.1",
        pod_ip="127.100.0.2",
        start_time=T0,
        init_containers=init,
        containers=containers,
        terminal=terminal,
        initialized=initialized,
    )


SETUP = {"name": "setup", "image": "busybox"}
SIDECAR = {"name": "proxy", "image": "busybox", "restartPolicy": "Always"}

PHASES = [
    pytest.param(spec(), view((running(),)), "", "Running", id="running"),
    pytest.param(spec(), view((waiting(),)), "", "Pending", id="not-started-yet"),
    pytest.param(
        spec("app", "side"), view((running(), waiting("side"))), "", "Pending",
        id="one-still-waiting",
    ),
    pytest.param(spec(), view((crashlooping(),)), "", "Running", id="crash-loop-is-running"),
    pytest.param(spec(policy="Never"), view((stopped(code=0),)), "", "Succeeded",
                 id="never-all-succeeded"),
    pytest.param(spec("a", "b", policy="Never"), view((stopped("a", 0), stopped("b", 2))), "",
                 "Failed", id="never-one-failed"),
    pytest.param(spec(policy="OnFailure"), view((crashlooping(code=1),)), "", "Running",
                 id="on-failure-restarting"),
    pytest.param(spec(policy="OnFailure"), view((stopped(code=0),)), "", "Succeeded",
                 id="on-failure-succeeded"),
    pytest.param(spec(), view((stopped(code=0),), terminal=True), "", "Succeeded",
                 id="deleted-all-zero"),
    pytest.param(spec(), view((stopped(code=137),), terminal=True), "", "Failed",
                 id="deleted-with-failure"),
    pytest.param(spec(), view((running(),)), "Failed", "Failed", id="terminal-phase-sticks"),
    pytest.param(spec(init=(SETUP,)), view((waiting(),), init=(running("setup"),)), "",
                 "Pending", id="init-running"),
    pytest.param(spec(init=(SETUP,), policy="Never"),
                 view((waiting(),), init=(stopped("setup", 1),)), "", "Failed",
                 id="init-failed-never"),
    pytest.param(spec(init=(SETUP,)), view((waiting(),), init=(crashlooping("setup"),)), "",
                 "Pending", id="init-failed-restarting"),
    pytest.param(spec(init=(SETUP,)), view((running(),), init=(stopped("setup", 0),)), "",
                 "Running", id="init-done"),
    pytest.param(spec(init=(SIDECAR,)), view((waiting(),), init=(waiting("proxy"),)), "",
                 "Pending", id="sidecar-not-started"),
    pytest.param(spec(init=(SIDECAR,), policy="Never"),
                 view((stopped(code=0),), init=(running("proxy"),), initialized=True), "",
                 "Running", id="sidecar-outlives-job-until-stopped"),
]  # fmt: skip


@pytest.mark.parametrize(("pod_spec", "pod_view", "previous", "phase"), PHASES)
def test_pod_phase(pod_spec: dict[str, Any], pod_view: PodView, previous: str, phase: str) -> None:
    assert pod_phase(pod_spec, pod_view, previous_phase=previous) == phase


def scheduled_pod(**spec_fields: Any) -> dict[str, Any]:
    pod = make_pod("checkout-1", namespace="shop")
    pod["metadata"]["generation"] = 3
    pod["spec"].update(nodeName="memwarden-sim-0", **spec_fields)
    pod["status"] = {
        "phase": "Pending",
        "qosClass": "Burstable",
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-25T17:59:59Z"}
        ],
    }
    return pod


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_running_pod_status() -> None:
    resources = {"limits": {"memory": "64Mi"}, "requests": {"memory": "64Mi"}}
    status = build_pod_status(
        pod=scheduled_pod(),
        view=view((running(container_id="nodesim://c1", resources=resources),)),
        previous=None,
        now=NOW,
    )
    assert status["phase"] == "Running"
    assert status["podIP"] == "127.100.0.2"
    assert status["podIPs"] == [{"ip": "127.100.0.2"}]
    assert status["hostIPs"] == [{"ip": "127.0.0.1"}]
    assert status["startTime"] == "2026-11-25T18:00:00Z"
    assert status["observedGeneration"] == 3
    by_type = conditions(status)
    for kind in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady"):
        assert by_type[kind]["status"] == "True"
        assert by_type[kind]["lastTransitionTime"] == "2026-11-25T18:05:00Z"
        assert by_type[kind]["observedGeneration"] == 3
    assert status["containerStatuses"] == [
        {
            "name": "app",
            "image": "memwarden/leaky:dev",
            "imageID": "",
            "containerID": "nodesim://c1",
            "ready": True,
            "started": True,
            "restartCount": 0,
            "state": {"running": {"startedAt": "2026-11-25T18:00:00Z"}},
            "lastState": {},
            "resources": resources,
        }
    ]


def test_what_others_own_is_carried_over() -> None:
    pod = scheduled_pod()
    pod["status"]["nominatedNodeName"] = "elsewhere"
    pod["status"]["conditions"].append(
        {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}
    )
    status = build_pod_status(pod=pod, view=view((running(),)), previous=None, now=NOW)
    assert status["qosClass"] == "Burstable"
    assert status["nominatedNodeName"] == "elsewhere"
    by_type = conditions(status)
    assert by_type["PodScheduled"]["lastTransitionTime"] == "2026-11-25T17:59:59Z"
    assert by_type["DisruptionTarget"]["reason"] == "EvictionByEvictionAPI"


def test_transition_times_move_only_on_change() -> None:
    pod = scheduled_pod()
    first = build_pod_status(pod=pod, view=view((waiting(),)), previous=None, now=T0)
    later = T0 + dt.timedelta(seconds=7)
    second = build_pod_status(pod=pod, view=view((running(),)), previous=first, now=later)
    before, after = conditions(first), conditions(second)
    assert after["Initialized"]["lastTransitionTime"] == before["Initialized"]["lastTransitionTime"]
    assert after["Ready"]["lastTransitionTime"] == "2026-11-25T18:00:07Z"
    assert before["Ready"]["reason"] == "ContainersNotReady"
    assert before["Ready"]["message"] == "containers with unready status: [app]"
    assert "reason" not in after["Ready"]


def test_oom_killed_container_waiting_to_restart() -> None:
    oom = Terminated(exit_code=137, reason="OOMKilled", started_at=T0, finished_at=T1)
    app = ContainerView(
        name="app",
        image="memwarden/leaky:dev",
        state=Waiting("CrashLoopBackOff", "back-off 1s restarting failed container=app"),
        last_state=oom,
        restart_count=1,
    )
    status = build_pod_status(pod=scheduled_pod(), view=view((app,)), previous=None, now=NOW)
    (entry,) = status["containerStatuses"]
    assert entry["ready"] is False
    assert entry["restartCount"] == 1
    assert entry["state"] == {
        "waiting": {
            "reason": "CrashLoopBackOff",
            "message": "back-off 1s restarting failed container=app",
        }
    }
    assert entry["lastState"]["terminated"] == {
        "exitCode": 137,
        "reason": "OOMKilled",
        "startedAt": "2026-11-25T18:00:00Z",
        "finishedAt": "2026-11-25T18:00:30Z",
    }
    assert status["phase"] == "Running"
    assert conditions(status)["ContainersReady"]["status"] == "False"


def test_ephemeral_container_status() -> None:
    done = Terminated(exit_code=0, reason="Completed", finished_at=T1, message="4242")
    debugger = ContainerView(name="debugger", image="memwarden/toolbox:dev", state=done)
    pod_view = PodView(
        host_ip="127.0.0.1",
        pod_ip="127.100.0.2",
        start_time=T0,
        containers=(running(),),
        ephemeral_containers=(debugger,),
    )
    status = build_pod_status(pod=scheduled_pod(), view=pod_view, previous=None, now=NOW)
    (entry,) = status["ephemeralContainerStatuses"]
    assert entry["ready"] is False
    assert entry["restartCount"] == 0
    assert entry["state"]["terminated"]["message"] == "4242"
    # The pod itself stays ready: ephemeral containers do not count.
    assert conditions(status)["Ready"]["status"] == "True"


def test_incomplete_init_containers() -> None:
    pod = scheduled_pod(initContainers=[SETUP, {"name": "migrate", "image": "busybox"}])
    pod_view = view((waiting(),), init=(stopped("setup", 0), running("migrate")))
    status = build_pod_status(pod=pod, view=pod_view, previous=None, now=NOW)
    initialized = conditions(status)["Initialized"]
    assert initialized["status"] == "False"
    assert initialized["reason"] == "ContainersNotInitialized"
    assert initialized["message"] == "containers with incomplete status: [migrate]"
    assert [s["name"] for s in status["initContainerStatuses"]] == ["setup", "migrate"]
    assert status["phase"] == "Pending"


def test_readiness_gates() -> None:
    pod = scheduled_pod(readinessGates=[{"conditionType": "example.com/warm"}])
    status = build_pod_status(pod=pod, view=view((running(),)), previous=None, now=NOW)
    by_type = conditions(status)
    assert by_type["ContainersReady"]["status"] == "True"
    assert by_type["Ready"]["status"] == "False"
    assert by_type["Ready"]["reason"] == "ReadinessGatesNotReady"
    pod["status"]["conditions"].append({"type": "example.com/warm", "status": "True"})
    status = build_pod_status(pod=pod, view=view((running(),)), previous=None, now=NOW)
    assert conditions(status)["Ready"]["status"] == "True"


def test_completed_pod_is_not_ready() -> None:
    pod = scheduled_pod(restartPolicy="Never")
    status = build_pod_status(pod=pod, view=view((stopped(code=0),)), previous=None, now=NOW)
    assert status["phase"] == "Succeeded"
    assert conditions(status)["Ready"]["reason"] == "PodCompleted"


# --- the runner's small rules -----------------------------------------------------------

EXIT_CODES = [
    pytest.param(0, 0, id="clean"),
    pytest.param(3, 3, id="error"),
    pytest.param(-9, 137, id="sigkill"),
    pytest.param(-15, 143, id="sigterm"),
]


@pytest.mark.parametrize(("returncode", "exit_code"), EXIT_CODES)
def test_exit_code_of(returncode: int, exit_code: int) -> None:
    assert exit_code_of(returncode) == exit_code


@pytest.mark.parametrize(
    ("exit_code", "oom", "reason"),
    [
        pytest.param(0, False, "Completed", id="completed"),
        pytest.param(2, False, "Error", id="error"),
        pytest.param(137, True, "OOMKilled", id="oom"),
    ],
)
def test_terminated_reason(exit_code: int, oom: bool, reason: str) -> None:
    assert terminated_reason(exit_code, oom_killed=oom) == reason


@pytest.mark.parametrize(
    ("policy", "exit_code", "restart"),
    [
        pytest.param("Always", 0, True, id="always-after-success"),
        pytest.param("Always", 137, True, id="always-after-oom"),
        pytest.param("OnFailure", 0, False, id="on-failure-success"),
        pytest.param("OnFailure", 1, True, id="on-failure-failure"),
        pytest.param("Never", 137, False, id="never"),
    ],
)
def test_should_restart(policy: str, exit_code: int, restart: bool) -> None:
    assert should_restart(policy, exit_code) is restart


def test_backoff_doubles_up_to_the_cap() -> None:
    delays = [backoff_seconds(n, base=1.0, cap=20.0) for n in range(0, 8)]
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0]
    assert backoff_seconds(10_000, base=1.0, cap=20.0) == 20.0


MESSAGES = [
    pytest.param("File", b"4242", b"log", 0, "4242", id="file"),
    pytest.param("File", b"x" * 5000, b"", 0, "x" * 4096, id="file-truncated-4096"),
    pytest.param("File", b"", b"boom\n", 1, "", id="file-empty-no-fallback"),
    pytest.param("FallbackToLogsOnError", b"", b"a\nboom\n", 1, "a\nboom\n", id="fallback-logs"),
    pytest.param("FallbackToLogsOnError", b"", b"fine\n", 0, "", id="no-fallback-on-success"),
    pytest.param(
        "FallbackToLogsOnError",
        b"",
        b"".join(b"line %d\n" % i for i in range(200)),
        2,
        "".join(f"line {i}\n" for i in range(120, 200)),
        id="fallback-last-80-lines",
    ),
    pytest.param("FallbackToLogsOnError", b"", b"y" * 3000, 2, "y" * 2048, id="fallback-2048"),
]


@pytest.mark.parametrize(("policy", "file_bytes", "log_tail", "code", "message"), MESSAGES)
def test_termination_message(
    policy: str, file_bytes: bytes, log_tail: bytes, code: int, message: str
) -> None:
    got = termination_message(
        policy=policy, file_bytes=file_bytes, log_tail=log_tail, exit_code=code
    )
    assert got == message


def test_a_running_container_reports_its_user_as_the_kubelet_does() -> None:
    """``containerStatuses[].user.linux`` (KEP-3619): the identity its process runs with,
    the image's default user included, which the API shows nowhere else."""

    def entry(view: ContainerView) -> dict[str, Any]:
        pod_view = PodView(
            host_ip="127.0.0.1", pod_ip="127.100.0.2", start_time=T0, containers=(view,)
        )
        status = build_pod_status(pod=scheduled_pod(), view=pod_view, previous=None, now=NOW)
        first: dict[str, Any] = status["containerStatuses"][0]
        return first

    assert entry(running(user=(65532, 65532)))["user"] == {
        "linux": {"uid": 65532, "gid": 65532, "supplementalGroups": [65532]}
    }
    assert "user" not in entry(stopped(user=(65532, 65532)))
