"""The node simulator (test infrastructure) against the real control plane and leaky.

One simulator for the module, tainted so that only these tests' pods land on it. Each
test checks one promise the rest of the suite relies on: pods run with their env (an
injected GOMEMLIMIT reaches the Go runtime), each pod has its own address, memory limits
kill like the kernel would, ephemeral containers see their target, deletion leaves no
process behind.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from memwarden_testing.cluster import wait_for
from memwarden_testing.nodesim import NodeSimulator, read_pod, running_pod

pytestmark = pytest.mark.integration

MiB = 1 << 20
LEAKY_IMAGE = "memwarden/leaky:dev"


@pytest.fixture(scope="module")
def sim(devcluster: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeSimulator]:
    state = tmp_path_factory.mktemp("nodesim")
    with NodeSimulator(kubeconfig=devcluster, state_dir=state, taint=True) as simulator:
        yield simulator


def leaky_container(
    *, env: dict[str, str], memory_limit: str | None = None, name: str = "app"
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": LEAKY_IMAGE,
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "ports": [{"containerPort": 6060, "name": "pprof"}],
    }
    if memory_limit:
        container["resources"] = {"limits": {"memory": memory_limit}}
    return container


def pod_body(sim: NodeSimulator, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": sim.pin({"terminationGracePeriodSeconds": 5, **spec}),
    }


def run_to_completion(
    core: client.CoreV1Api, namespace: str, debug: dict[str, Any], *, timeout: float, what: str
) -> dict[str, Any]:
    """Add ``debug`` as the only ephemeral container of pod ``target``; its terminated state."""
    core.patch_namespaced_pod_ephemeralcontainers(
        "target", namespace, {"spec": {"ephemeralContainers": [debug]}}
    )

    def terminated() -> dict[str, Any] | None:
        statuses = read_pod(core, namespace, "target")["status"].get(
            "ephemeralContainerStatuses"
        ) or [{}]
        return (statuses[0].get("state") or {}).get("terminated")

    state: dict[str, Any] = wait_for(terminated, timeout=timeout, what=what)
    return state


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample of ``name`` whose labels include ``labels``."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def test_node_is_ready_with_a_fresh_lease(sim: NodeSimulator, kube: client.ApiClient) -> None:
    node = client.CoreV1Api(kube).read_node(sim.node_name)
    assert node.status.allocatable == {
        "cpu": "4",
        "memory": "8Gi",
        "pods": "110",
        "ephemeral-storage": "50Gi",
    }
    assert node.metadata.labels["memwarden.dev/node-simulator"] == "true"
    assert "test infrastructure" in node.status.node_info.os_image
    lease = client.CoordinationV1Api(kube).read_namespaced_lease(sim.node_name, "kube-node-lease")
    assert lease.spec.holder_identity == sim.node_name
    assert lease.spec.renew_time is not None


def test_deployment_of_leaky_runs_with_its_env(
    sim: NodeSimulator, kube: client.ApiClient, namespace: str
) -> None:
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    container = leaky_container(env={"LEAKY_RATE": "64Ki", "GOMEMLIMIT": "123MiB"})
    container["resources"] = {"requests": {"memory": "64Mi"}, "limits": {"memory": "256Mi"}}
    apps.create_namespaced_deployment(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "leaky"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "leaky"}},
                "template": {
                    "metadata": {"labels": {"app": "leaky"}},
                    "spec": sim.pin({"containers": [container]}),
                },
            },
        },
    )

    def the_pod() -> str | None:
        pods = core.list_namespaced_pod(namespace, label_selector="app=leaky").items
        return pods[0].metadata.name if pods else None

    name = wait_for(the_pod, timeout=30, what="the Deployment's pod")
    pod = running_pod(core, namespace, name)
    status = pod["status"]
    assert pod["spec"]["nodeName"] == sim.node_name
    assert status["podIP"].startswith("127.")
    (app,) = status["containerStatuses"]
    assert app["ready"] and app["started"] and app["restartCount"] == 0
    assert "running" in app["state"]

    # GOMEMLIMIT from the pod's env reached the Go runtime, at the pod's own address.
    metrics = wait_for(
        lambda: _try_get(f"http://{status['podIP']}:6060/metrics"), what="leaky /metrics"
    )
    assert metric_value(metrics, "go_gc_gomemlimit_bytes") == 123 * MiB
    # `kubectl logs` goes through the API server to the simulator's kubelet endpoint.
    logs = core.read_namespaced_pod_log(name, namespace, container="app", tail_lines=20)
    assert f"listening on http://{status['podIP']}:6060" in logs

    # The simulator's cAdvisor view of the same container.
    labels = {"namespace": namespace, "pod": name, "container": "app", "image": LEAKY_IMAGE}
    working_set = wait_for(
        lambda: metric_value(sim.cadvisor(), "container_memory_working_set_bytes", **labels),
        what="working set of the leaky container",
    )
    assert 1 * MiB < working_set < 256 * MiB
    cadvisor = sim.cadvisor()
    assert metric_value(cadvisor, "container_spec_memory_limit_bytes", **labels) == 256 * MiB
    assert metric_value(cadvisor, "container_oom_events_total", **labels) == 0
    assert metric_value(
        cadvisor, "container_memory_failures_total", failure_type="pgfault", **labels
    )


def _try_get(url: str) -> str | None:
    try:
        return http_get(url)
    except OSError:
        return None


def test_memory_limit_oom_kills_and_restarts(
    sim: NodeSimulator, kube: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    container = leaky_container(env={"LEAKY_RATE": "64Mi"}, memory_limit="64Mi")
    core.create_namespaced_pod(namespace, pod_body(sim, "oom", {"containers": [container]}))

    def oom_killed_and_restarted() -> dict[str, Any] | None:
        statuses = (read_pod(core, namespace, "oom").get("status") or {}).get(
            "containerStatuses"
        ) or [{}]
        status = statuses[0]
        terminated = (status.get("lastState") or {}).get("terminated") or {}
        restarted = "running" in (status.get("state") or {}) or status.get("restartCount", 0) > 1
        return status if status.get("restartCount", 0) >= 1 and terminated and restarted else None

    status = wait_for(oom_killed_and_restarted, timeout=60, what="an OOM kill and a restart")
    terminated = status["lastState"]["terminated"]
    assert terminated["reason"] == "OOMKilled"
    assert terminated["exitCode"] == 137
    labels = {"namespace": namespace, "pod": "oom", "container": "app"}
    assert (metric_value(sim.cadvisor(), "container_oom_events_total", **labels) or 0) >= 1
    # `kubectl logs --previous`: the output of the instance that was killed, and only it.
    previous = core.read_namespaced_pod_log("oom", namespace, container="app", previous=True)
    assert previous.count("leaky: listening on") == 1


def test_ephemeral_container_sees_its_target(
    sim: NodeSimulator, kube: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    container = leaky_container(env={"LEAKY_RATE": "64Ki"})
    core.create_namespaced_pod(namespace, pod_body(sim, "target", {"containers": [container]}))
    pod = running_pod(core, namespace, "target")
    leaky_pid = sim.pod_pids(namespace, "target")["app"][0]

    debug = {
        "name": "debugger",
        "image": "busybox:1.36",
        "targetContainerName": "app",
        # In the target's PID namespace, where the target is PID 1 (cmdline: world-readable).
        "command": [
            "sh",
            "-c",
            'echo -n "$(tr "\\0" " " < /proc/1/cmdline)$MEMWARDEN_PPROF_HOST"'
            " > $MEMWARDEN_TERMINATION_LOG",
        ],
        "terminationMessagePolicy": "File",
    }
    state = run_to_completion(
        core, namespace, debug, timeout=30, what="the ephemeral container to finish"
    )
    assert state["exitCode"] == 0
    assert Path(f"/proc/{leaky_pid}/exe").resolve().name == "leaky"
    leaky_argv0 = Path(f"/proc/{leaky_pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    assert state["message"] == f"{leaky_argv0} {pod['status']['podIP']}"
    # It never restarts, and the target kept running.
    after = read_pod(core, namespace, "target")["status"]
    assert after["ephemeralContainerStatuses"][0]["restartCount"] == 0
    assert after["containerStatuses"][0]["restartCount"] == 0


def test_deleting_a_pod_stops_its_processes(
    sim: NodeSimulator, kube: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    spec = {
        "containers": [
            leaky_container(env={"LEAKY_RATE": "64Ki"}),
            {"name": "sidecar", "image": "example.com/anything:1"},  # a placeholder
        ]
    }
    core.create_namespaced_pod(namespace, pod_body(sim, "doomed", spec))
    running_pod(core, namespace, "doomed")
    pids = [pid for group in sim.pod_pids(namespace, "doomed").values() for pid in group]
    assert len(pids) >= 2

    core.delete_namespaced_pod("doomed", namespace)

    def gone() -> bool:
        try:
            core.read_namespaced_pod("doomed", namespace)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    wait_for(gone, timeout=30, what="the pod object to disappear")
    assert not [pid for pid in pids if _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_init_containers_env_sources_and_completion(
    sim: NodeSimulator, kube: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "settings"}, "data": {"mode": "strict"}}
    )
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "token"}, "stringData": {"value": "s3cret"}}
    )
    report = 'echo -n "$MODE $TOKEN $ME $LIMIT_MI" > $MEMWARDEN_TERMINATION_LOG'
    spec = {
        "restartPolicy": "Never",
        "initContainers": [{"name": "setup", "image": "busybox", "command": ["true"]}],
        "containers": [
            {
                "name": "job",
                "image": "busybox",
                "command": ["sh", "-c", report],
                "resources": {"limits": {"memory": "32Mi"}},
                "env": [
                    {
                        "name": "MODE",
                        "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}},
                    },
                    {
                        "name": "TOKEN",
                        "valueFrom": {"secretKeyRef": {"name": "token", "key": "value"}},
                    },
                    {"name": "ME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {
                        "name": "LIMIT_MI",
                        "valueFrom": {
                            "resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}
                        },
                    },
                ],
            }
        ],
    }
    core.create_namespaced_pod(namespace, pod_body(sim, "job", spec))

    def succeeded() -> dict[str, Any] | None:
        status = read_pod(core, namespace, "job").get("status") or {}
        return status if status.get("phase") == "Succeeded" else None

    status = wait_for(succeeded, timeout=30, what="the pod to succeed")
    (init,) = status["initContainerStatuses"]
    assert init["state"]["terminated"]["exitCode"] == 0
    (job,) = status["containerStatuses"]
    assert job["state"]["terminated"]["reason"] == "Completed"
    assert job["state"]["terminated"]["message"] == "strict s3cret job 32"


def test_in_place_resize_changes_the_enforced_limit(
    sim: NodeSimulator, kube: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    container = leaky_container(env={"LEAKY_RATE": "64Ki"})
    container["resources"] = {"requests": {"memory": "32Mi"}, "limits": {"memory": "64Mi"}}
    core.create_namespaced_pod(namespace, pod_body(sim, "resized", {"containers": [container]}))
    running_pod(core, namespace, "resized")

    resize = {
        "spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "128Mi"}}}]}
    }
    core.patch_namespaced_pod_resize("resized", namespace, resize)

    def resized() -> dict[str, Any] | None:
        (status,) = read_pod(core, namespace, "resized")["status"]["containerStatuses"]
        limits = (status.get("resources") or {}).get("limits") or {}
        return status if limits.get("memory") == "128Mi" else None

    status = wait_for(resized, timeout=30, what="the resize to show in the status")
    assert status["restartCount"] == 0
    labels = {"namespace": namespace, "pod": "resized", "container": "app"}
    # Like cAdvisor, the simulator exposes a container once its usage has been sampled;
    # on a loaded machine that can come after the status (CI read no series at all once).
    limit = wait_for(
        lambda: metric_value(sim.cadvisor(), "container_spec_memory_limit_bytes", **labels),
        timeout=30,
        what="the container's series in /metrics/cadvisor",
    )
    assert limit == 128 * MiB


def _status_fields(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _pid_namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/pid")


CAP_SYS_PTRACE = 1 << 19
NONROOT = {"runAsUser": 65532, "runAsGroup": 65532}


def test_containers_run_as_their_user_with_the_runtimes_capabilities(
    sim: NodeSimulator, kube: client.ApiClient, namespace: str
) -> None:
    """The kernel sees the identity a runtime would give: a non-root container has no
    effective capability even when ``add`` lists one (kubernetes issue 56374); root gets
    the default set plus ``add``; each container is PID 1 of its own PID namespace."""
    core = client.CoreV1Api(kube)
    nonroot = leaky_container(env={"LEAKY_RATE": "64Ki"})
    nonroot["securityContext"] = {**NONROOT, "capabilities": {"add": ["SYS_PTRACE"]}}
    root = {
        "name": "root",
        "image": "example.com/anything:1",
        "securityContext": {"capabilities": {"drop": ["ALL"], "add": ["SYS_PTRACE"]}},
    }
    spec = {"containers": [nonroot, root]}
    spec["containers"].append(
        {"name": "image-user", "image": "memwarden/toolbox:dev", "command": ["sleep", "3600"]}
    )
    core.create_namespaced_pod(namespace, pod_body(sim, "identity", spec))
    pod = running_pod(core, namespace, "identity")
    pids = sim.pod_pids(namespace, "identity")
    # The simulator reports Running once it has started the wrapper chain (shim, setpriv,
    # program); on a loaded machine setpriv may not have dropped to the user yet. A real
    # runtime sets the credentials before StartContainer returns: wait for them (bounded),
    # then check everything at once. (CI saw uid 0 once; leftover: the simulator should
    # report Running only after the identity is applied.)
    wait_for(
        lambda: all(
            _status_fields(pids[name][0])["Uid"].split() == ["65532"] * 4
            for name in ("app", "image-user")
        ),
        timeout=10,
        interval=0.05,
        what="the non-root containers' processes running as their user",
    )
    app = _status_fields(pids["app"][0])
    assert app["Uid"].split() == ["65532"] * 4
    assert app["Gid"].split() == ["65532"] * 4
    assert int(app["CapEff"], 16) == 0
    assert int(app["CapPrm"], 16) == 0
    assert int(app["CapBnd"], 16) & CAP_SYS_PTRACE  # bounded, never effective
    assert app["NSpid"].split()[-1] == "1"
    other = _status_fields(pids["root"][0])
    assert other["Uid"].split() == ["0"] * 4
    assert int(other["CapEff"], 16) == CAP_SYS_PTRACE
    assert other["NSpid"].split()[-1] == "1"
    assert _pid_namespace(pids["app"][0]) != _pid_namespace(pids["root"][0])
    # The image's default user (memwarden's: 65532), and the kubelet-style report of each.
    assert _status_fields(pids["image-user"][0])["Uid"].split() == ["65532"] * 4
    reported = {
        s["name"]: (s["user"]["linux"]["uid"], s["user"]["linux"]["gid"])
        for s in pod["status"]["containerStatuses"]
    }
    assert reported == {"app": (65532, 65532), "root": (0, 0), "image-user": (65532, 65532)}


DEBUGGERS = [
    pytest.param({"runAsUser": 1000, "capabilities": {"drop": ["ALL"]}}, False, id="other-user"),
    pytest.param(
        {"runAsUser": 1000, "capabilities": {"drop": ["ALL"], "add": ["SYS_PTRACE"]}},
        False,
        id="other-user-adding-SYS_PTRACE",
    ),
    pytest.param({**NONROOT, "capabilities": {"drop": ["ALL"]}}, True, id="the-targets-user"),
    pytest.param(
        {"runAsUser": 0, "capabilities": {"drop": ["ALL"], "add": ["SYS_PTRACE"]}},
        True,
        id="root-with-SYS_PTRACE",
    ),
    pytest.param(
        {"runAsUser": 0, "capabilities": {"drop": ["ALL"]}}, False, id="root-without-caps"
    ),
]


@pytest.mark.parametrize(("security", "readable"), DEBUGGERS)
def test_the_kernel_decides_whether_a_debug_container_reads_its_targets_smaps(
    sim: NodeSimulator,
    kube: client.ApiClient,
    namespace: str,
    security: dict[str, Any],
    readable: bool,
) -> None:
    core = client.CoreV1Api(kube)
    target = leaky_container(env={"LEAKY_RATE": "64Ki"})
    target["securityContext"] = {**NONROOT, "capabilities": {"drop": ["ALL"]}}
    core.create_namespaced_pod(namespace, pod_body(sim, "target", {"containers": [target]}))
    running_pod(core, namespace, "target")
    debug = {
        "name": "debugger",
        "image": "busybox:1.36",
        "targetContainerName": "app",
        "securityContext": security,
        "command": [
            "sh",
            "-c",
            "id -u > $MEMWARDEN_TERMINATION_LOG; "
            "head -n 2 /proc/1/smaps_rollup >> $MEMWARDEN_TERMINATION_LOG 2>&1",
        ],
        "terminationMessagePolicy": "File",
    }
    state = run_to_completion(
        core, namespace, debug, timeout=30, what="the debug container to finish"
    )
    message = state["message"]
    assert message.splitlines()[0] == str(security["runAsUser"])
    if readable:
        assert state["exitCode"] == 0, message
        assert "Rss:" in message
    else:
        assert state["exitCode"] != 0, message
        assert "Permission denied" in message


def test_share_process_namespace_pods_share_one_held_by_a_pause_process(
    sim: NodeSimulator, kube: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    spec = {
        "shareProcessNamespace": True,
        "containers": [
            leaky_container(env={"LEAKY_RATE": "64Ki"}),
            {"name": "sidecar", "image": "example.com/anything:1"},
        ],
    }
    core.create_namespaced_pod(namespace, pod_body(sim, "shared", spec))
    running_pod(core, namespace, "shared")
    pids = sim.pod_pids(namespace, "shared")

    app, sidecar = pids["app"][0], pids["sidecar"][0]
    namespaces = {_pid_namespace(pid) for pid in (app, sidecar)}
    assert len(namespaces) == 1
    # PID 1 of that namespace is the pause process (uid 65535), as in a real pod.
    assert _status_fields(app)["NSpid"].split()[-1] != "1"
    assert _status_fields(sidecar)["NSpid"].split()[-1] != "1"


TOOLBOXES = [
    pytest.param({}, False, id="the-images-user-65532-adding-SYS_PTRACE"),
    pytest.param({"runAsUser": 0}, True, id="root-with-only-SYS_PTRACE"),
]


@pytest.mark.parametrize(("identity", "readable"), TOOLBOXES)
def test_the_toolbox_reads_a_root_targets_proc_only_with_an_effective_sys_ptrace(
    sim: NodeSimulator,
    kube: client.ApiClient,
    namespace: str,
    identity: dict[str, Any],
    readable: bool,
) -> None:
    """The real toolbox (``memwarden capture``) as a debug container of a root workload:
    as its image's user (65532), ``add: [SYS_PTRACE]`` is not effective and the kernel
    refuses ``smaps_rollup``; as root with only SYS_PTRACE it reads it."""
    core = client.CoreV1Api(kube)
    target = leaky_container(env={"LEAKY_RATE": "64Ki"})
    core.create_namespaced_pod(namespace, pod_body(sim, "target", {"containers": [target]}))
    running_pod(core, namespace, "target")
    toolbox = {
        "name": "toolbox",
        "image": "memwarden/toolbox:dev",
        "targetContainerName": "app",
        "command": ["memwarden", "capture", "--artifacts", "smaps", "--out", "bundle.tar.gz"],
        "securityContext": {
            **identity,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": ["SYS_PTRACE"]},
        },
        "terminationMessagePolicy": "File",
    }
    state = run_to_completion(core, namespace, toolbox, timeout=60, what="the toolbox to finish")
    summary = json.loads(state["message"])
    if readable:
        assert "proc/smaps_rollup" in summary["ok"], summary
    else:
        assert "Permission denied" in summary["failed"]["proc/smaps_rollup"], summary
