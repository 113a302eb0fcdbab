"""JVM and Node.js contracts on the real API server, and in the real runtimes.

Admission merges memwarden's flags into the container's own JAVA_TOOL_OPTIONS and
NODE_OPTIONS; then the machine's JDK 17 and Node.js 20 start with the admitted variables
and report the heap limit they took, which must be the plan's.

There is no container runtime here, so no cgroup tells the JVM its memory.max: the
``-XX:MaxRAM`` on the java command line stands in for it (the JVM reads memory.max into
the same value).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from memwarden.cli import main
from memwarden.quantity import parse_bytes
from memwarden.runtime_sizing import V8_YOUNG_GENERATION
from memwarden_testing.builders import make_container, make_pod, make_policy, make_policy_spec
from memwarden_testing.cluster import create_pod, kubectl, wait_policy_indexed
from memwarden_testing.operator import OperatorProcess

JAVA = "/usr/bin/java"
NODE = "/usr/bin/node"
LIMIT = "1Gi"
MEMORY = {"request": "512Mi", "limit": LIMIT}
JVM = {"maxRAMPercentage": 70, "maxMetaspace": "96Mi"}
NODE_RULE = {"maxOldSpaceSize": "60%"}
THEIR_JAVA = '-Dfile.encoding=UTF-8 -Dapp.name="orders  eu" -Xss512k'
THEIR_NODE = "--enable-source-maps --max_old_space_size=100"
#: The JVM rounds its heap up to its alignment: 2 MiB for G1 on 4 KiB pages (measured here).
JVM_ALIGNMENT = 2 * 2**20


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env") or []}


def java_max_heap(java_tool_options: str, *, memory_max: int) -> int:
    """MaxHeapSize of a JVM started with ``java_tool_options`` under ``memory_max``."""
    result = subprocess.run(
        [JAVA, f"-XX:MaxRAM={memory_max}", "-XX:+PrintFlagsFinal", "-version"],
        env={**os.environ, "JAVA_TOOL_OPTIONS": java_tool_options},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert f"Picked up JAVA_TOOL_OPTIONS: {java_tool_options}" in result.stderr
    match = re.search(r"size_t MaxHeapSize\s+=\s+(\d+)", result.stdout)
    assert match, result.stdout[-2000:]
    return int(match.group(1))


def node_heap_limit(node_options: str) -> int:
    result = subprocess.run(
        [NODE, "-e", "console.log(require('v8').getHeapStatistics().heap_size_limit)"],
        env={**os.environ, "NODE_OPTIONS": node_options},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(result.stdout.strip())


def _offline(pod: dict[str, Any]) -> dict[str, Any]:
    """An admitted pod as a file for ``memwarden explain``: in the policy's namespace."""
    return make_pod(
        "orders", namespace="shop", labels={"app": "checkout"}, containers=pod["spec"]["containers"]
    )


def explain(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pod: dict[str, Any], *args: str
) -> dict[str, Any]:
    """The plan ``memwarden explain`` gives for ``pod`` under the test's policy."""
    policy = make_policy(
        namespace="shop", spec=make_policy_spec(memory=MEMORY, jvm=JVM, node=NODE_RULE)
    )
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    capsys.readouterr()
    files = ["--policy", str(tmp_path / "policy.yaml"), "--pod", str(tmp_path / "pod.yaml")]
    code = main(["explain", *files, *args, "-o", "json"])
    assert code == 0
    (container,) = json.loads(capsys.readouterr().out)["containers"]
    return dict(container)


@pytest.fixture
def runtimes_pod(memwarden: OperatorProcess, kube: client.ApiClient, namespace: str) -> dict:
    """A pod with its own JAVA_TOOL_OPTIONS and NODE_OPTIONS, admitted under the policy."""
    policy = make_policy(
        namespace=namespace, spec=make_policy_spec(memory=MEMORY, jvm=JVM, node=NODE_RULE)
    )
    kubectl(memwarden.kubeconfig, "apply", "-f", "-", input=yaml.safe_dump(policy))
    wait_policy_indexed(kube, namespace, "checkout")
    container = make_container(env={"JAVA_TOOL_OPTIONS": THEIR_JAVA, "NODE_OPTIONS": THEIR_NODE})
    return create_pod(kube, namespace, "orders", labels={"app": "checkout"}, containers=[container])


def test_admission_keeps_the_containers_flags_and_adds_ours(runtimes_pod: dict) -> None:
    env = env_of(runtimes_pod)
    assert env["JAVA_TOOL_OPTIONS"] == (
        f"{THEIR_JAVA} -XX:MaxRAMPercentage=70 -XX:MaxMetaspaceSize=96m"
    )
    # Its own old-space flag is kept (no overrideExisting); the rest of its flags too.
    assert env["NODE_OPTIONS"] == THEIR_NODE
    assert runtimes_pod["spec"]["containers"][0]["resources"]["limits"]["memory"] == LIMIT


@pytest.mark.skipif(not Path(JAVA).exists(), reason="no JDK (hack/bootstrap.sh installs one)")
def test_the_jvm_takes_the_planned_heap(
    runtimes_pod: dict, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    planned = explain(capsys, tmp_path, _offline(runtimes_pod))
    heap = java_max_heap(env_of(runtimes_pod)["JAVA_TOOL_OPTIONS"], memory_max=parse_bytes(LIMIT))
    want = planned["runtimeLimits"]["jvmMaxHeapBytes"]
    assert 0 <= heap - want < JVM_ALIGNMENT, (heap, want)


@pytest.mark.skipif(not Path(JAVA).exists(), reason="no JDK (hack/bootstrap.sh installs one)")
def test_under_memory_high_the_jvm_heap_is_the_percentage_of_memory_high(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The JVM applies MaxRAMPercentage to memory.max: memwarden's scaled percentage
    gives 70% of memory.high, as the plan says."""
    pod = make_pod("orders", namespace="shop", labels={"app": "checkout"})
    planned = explain(capsys, tmp_path, pod, "--throttling-factor", "0.9")
    high = parse_bytes(planned["cgroup"]["memory.high"])
    want = planned["runtimeLimits"]["jvmMaxHeapBytes"]
    assert want == pytest.approx(high * 0.70, abs=2**20)
    heap = java_max_heap(planned["options"]["JAVA_TOOL_OPTIONS"], memory_max=parse_bytes(LIMIT))
    assert 0 <= heap - want < JVM_ALIGNMENT, (heap, want)


@pytest.mark.skipif(not Path(NODE).exists(), reason="no Node.js (hack/bootstrap.sh installs it)")
def test_v8_takes_the_planned_old_space(
    runtimes_pod: dict,
    kube: client.ApiClient,
    namespace: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    plain = create_pod(kube, namespace, "storefront", labels={"app": "checkout"})
    planned = explain(capsys, tmp_path, _offline(plain))
    old_space = planned["runtimeLimits"]["nodeMaxOldSpaceBytes"]
    assert old_space == 614 * 2**20  # 60% of 1Gi, in whole MiB
    assert env_of(plain)["NODE_OPTIONS"] == "--max-old-space-size=614"
    limit = node_heap_limit(env_of(plain)["NODE_OPTIONS"])
    assert 0 < limit - old_space <= V8_YOUNG_GENERATION, (limit, old_space)
    # The pod that brought its own old space runs with it.
    theirs = node_heap_limit(env_of(runtimes_pod)["NODE_OPTIONS"])
    assert 0 < theirs - 100 * 2**20 <= V8_YOUNG_GENERATION
