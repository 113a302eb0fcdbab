"""Invalid MemoryPolicy specs, each with the field an error must name (shared matrix)."""

from __future__ import annotations

import pytest

from memwarden_testing.builders import make_policy_spec

PLAIN = {"request": "512Mi", "limit": "1Gi"}

INVALID = [
    pytest.param(
        make_policy_spec(memory={"request": "12Zi", "limit": "1Gi"}),
        "spec.memory.request",
        id="wrong-quantity",
    ),
    pytest.param(
        make_policy_spec(memory={"request": "-1Gi"}), "spec.memory.request", id="negative-quantity"
    ),
    pytest.param(
        make_policy_spec(memory={"request": "2Gi", "limit": "1Gi"}),
        "spec.memory.request",
        id="request-above-limit",
    ),
    pytest.param(
        make_policy_spec(memory={"protect": "2Gi", "high": "1Gi", "max": "3Gi"}),
        "spec.memory.protect",
        id="three-intent-fields-out-of-order",
    ),
    pytest.param(
        make_policy_spec(memory={"high": "3Gi", "max": "2Gi"}),
        "spec.memory.high",
        id="high-above-max",
    ),
    pytest.param(
        make_policy_spec(memory={"request": "1Gi", "max": "2Gi"}),
        "spec.memory",
        id="plain-and-intent",
    ),
    pytest.param(make_policy_spec(memory={"high": "1Gi"}), "spec.memory.high", id="high-alone"),
    pytest.param(make_policy_spec(memory={}), "spec.memory", id="empty-memory"),
    pytest.param(
        make_policy_spec(memory=PLAIN, go={"memoryLimit": "-10%"}),
        "spec.runtime.go.memoryLimit",
        id="negative-ratio",
    ),
    pytest.param(
        make_policy_spec(memory=PLAIN, go={"memoryLimit": "150%"}),
        "spec.runtime.go.memoryLimit",
        id="ratio-above-100",
    ),
    pytest.param(
        make_policy_spec(memory=PLAIN, go={"gogc": "fast"}), "spec.runtime.go.gogc", id="bad-gogc"
    ),
    pytest.param(
        make_policy_spec(memory=PLAIN, jvm={"maxRAMPercentage": 75, "maxHeap": "512Mi"}),
        "spec.runtime.jvm.maxHeap",
        id="jvm-percentage-and-heap",
    ),
    pytest.param(
        make_policy_spec(memory=PLAIN, jvm={"maxRAMPercentage": 120}),
        "spec.runtime.jvm.maxRAMPercentage",
        id="jvm-percentage-above-100",
    ),
    pytest.param(
        make_policy_spec(memory=PLAIN, jvm={"maxMetaspace": "0"}),
        "spec.runtime.jvm.maxMetaspace",
        id="jvm-zero-metaspace",
    ),
    pytest.param(
        make_policy_spec(memory=PLAIN, jvm={"maxDirectMemory": "lots"}),
        "spec.runtime.jvm.maxDirectMemory",
        id="jvm-bad-direct-memory",
    ),
    pytest.param(
        make_policy_spec(memory=PLAIN, node={"maxOldSpaceSize": "0%"}),
        "spec.runtime.node.maxOldSpaceSize",
        id="node-zero-percent",
    ),
    pytest.param(
        make_policy_spec(memory=PLAIN, node={"maxOldSpaceSize": "512Ki"}),
        "spec.runtime.node.maxOldSpaceSize",
        id="node-below-one-mib",
    ),
    pytest.param(make_policy_spec(memory=PLAIN, mode="Force"), "spec.mode", id="unknown-mode"),
    pytest.param(
        make_policy_spec(memory=PLAIN, update="Rolling"), "spec.update", id="unknown-update-mode"
    ),
    pytest.param(
        make_policy_spec(memory=PLAIN, update="InPlace", maxShrinkPercent=0),
        "spec.maxShrinkPercent",
        id="max-shrink-zero",
    ),
    pytest.param(
        make_policy_spec(memory=PLAIN, priority=5000), "spec.priority", id="priority-out-of-range"
    ),
    pytest.param(
        make_policy_spec(memory=PLAIN, oomRisk={"gcCPURatio": 0}),
        "spec.oomRisk.gcCPURatio",
        id="gc-cpu-ratio-zero",
    ),
    pytest.param(
        make_policy_spec(memory=PLAIN, oomRisk={"gcCPURatio": 1.5}),
        "spec.oomRisk.gcCPURatio",
        id="gc-cpu-ratio-above-one",
    ),
    pytest.param({"memory": PLAIN}, "spec.selector", id="missing-selector"),
    pytest.param({**make_policy_spec(memory=PLAIN), "memroy": PLAIN}, "memroy", id="unknown-field"),
    pytest.param(
        make_policy_spec(memory=PLAIN, containers=[""]),
        "spec.containers[0]",
        id="empty-container-name",
    ),
    pytest.param(
        {"selector": {"matchExpressions": [{"key": "a", "operator": "Like"}]}, "memory": PLAIN},
        "spec.selector.matchExpressions[0].operator",
        id="bad-selector-operator",
    ),
]
