"""JVM and Node.js flags from a container's cgroup values (runtime_sizing.py)."""

from __future__ import annotations

import pytest

from memwarden.runtime_sizing import (
    JvmRuntimeRule,
    NodeRuntimeRule,
    jvm_size,
    size_runtimes,
)
from memwarden.sizing import (
    CgroupValues,
    ContainerSizing,
    PodSizing,
)

pytestmark = pytest.mark.unit

MIB, GIB = 2**20, 2**30
HIGH_1G = 1020051456  # request 512Mi, limit 1Gi, factor 0.9, 4 KiB pages


def sized(*, memory_max: int | None = GIB, memory_high: int | None = None) -> PodSizing:
    cgroup = CgroupValues(memory_max=memory_max, memory_high=memory_high)
    container = ContainerSizing(
        name="app", memory_request=512 * MIB, memory_limit=memory_max, cgroup=cgroup
    )
    return PodSizing(qos_class="Burstable", containers=(container,), pod_cgroup=cgroup)


def one(sizing: PodSizing) -> ContainerSizing:
    assert sizing.infeasible is None, sizing.infeasible
    (container,) = sizing.containers
    return container


@pytest.mark.parametrize(
    ("rule", "memory_high", "options"),
    [
        pytest.param(
            JvmRuntimeRule(max_ram_percentage=75),
            None,
            ("-XX:MaxRAMPercentage=75",),
            id="percent-of-max",
        ),
        pytest.param(
            JvmRuntimeRule(max_ram_percentage=75),
            HIGH_1G,
            ("-XX:MaxRAMPercentage=71.2497",),
            id="percent-of-high-scaled-to-max",
        ),
        pytest.param(
            JvmRuntimeRule(max_heap=768 * MIB, max_metaspace=128 * MIB, max_direct_memory=64 * MIB),
            None,
            ("-Xmx768m", "-XX:MaxMetaspaceSize=128m", "-XX:MaxDirectMemorySize=64m"),
            id="absolute",
        ),
    ],
)
def test_jvm_flags(rule: JvmRuntimeRule, memory_high: int | None, options: tuple[str, ...]) -> None:
    container = one(size_runtimes(sized(memory_high=memory_high), jvm=rule, node=None))
    assert container.java_tool_options == options
    assert container.node_options is None


def test_jvm_plan_says_it_reads_memory_max_not_memory_high() -> None:
    container = one(
        size_runtimes(sized(memory_high=HIGH_1G), jvm=JvmRuntimeRule(max_heap=512 * MIB), node=None)
    )
    assert any("the JVM reads memory.max 1Gi, not memory.high" in n for n in container.notes)


@pytest.mark.parametrize(
    ("rule", "warned"),
    [
        pytest.param(JvmRuntimeRule(max_heap=768 * MIB), False, id="heap-and-stacks-fit"),
        pytest.param(
            JvmRuntimeRule(max_heap=768 * MIB, max_metaspace=128 * MIB, max_direct_memory=64 * MIB),
            True,
            id="heap-metaspace-direct-stacks-too-much",
        ),
        pytest.param(JvmRuntimeRule(max_ram_percentage=95), True, id="95-percent-heap"),
    ],
)
def test_jvm_headroom_warning_uses_the_go_rule(rule: JvmRuntimeRule, warned: bool) -> None:
    container = one(size_runtimes(sized(), jvm=rule, node=None))
    assert any("of headroom (5% or 32Mi" in n for n in container.notes) is warned


def test_jvm_heap_above_the_limit_is_infeasible() -> None:
    result = size_runtimes(sized(), jvm=JvmRuntimeRule(max_heap=2 * GIB), node=None)
    assert result.containers == ()
    assert result.infeasible is not None
    assert result.infeasible.startswith("runtime.jvm.maxHeap: -Xmx 2Gi is above memory.max 1Gi")
    assert result.infeasible.endswith("(container app)")


def test_jvm_percentage_without_a_limit_is_of_the_node() -> None:
    container = one(
        size_runtimes(sized(memory_max=None), jvm=JvmRuntimeRule(max_ram_percentage=50), node=None)
    )
    assert container.java_tool_options == ("-XX:MaxRAMPercentage=50",)
    assert any("of the node's memory" in n for n in container.notes)


@pytest.mark.parametrize(
    ("rule", "memory_high", "flag"),
    [
        pytest.param(NodeRuntimeRule(max_old_space_percent=75), None, 768, id="percent-of-max"),
        pytest.param(NodeRuntimeRule(max_old_space_percent=75), HIGH_1G, 729, id="of-high"),
        pytest.param(NodeRuntimeRule(max_old_space_bytes=300 * MIB + 5), None, 300, id="floored"),
    ],
)
def test_node_old_space(rule: NodeRuntimeRule, memory_high: int | None, flag: int) -> None:
    container = one(size_runtimes(sized(memory_high=memory_high), jvm=None, node=rule))
    assert container.node_options == (f"--max-old-space-size={flag}",)


def test_node_old_space_above_the_limit_is_infeasible() -> None:
    result = size_runtimes(sized(), jvm=None, node=NodeRuntimeRule(max_old_space_bytes=2 * GIB))
    assert result.infeasible is not None
    assert "runtime.node.maxOldSpaceSize" in result.infeasible


def test_node_headroom_counts_the_young_generation() -> None:
    container = one(
        size_runtimes(sized(), jvm=None, node=NodeRuntimeRule(max_old_space_bytes=950 * MIB))
    )
    assert any("young generation 48Mi" in n and "of headroom" in n for n in container.notes)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"max_ram_percentage": 50, "max_heap": GIB}, "not both", id="both"),
        pytest.param({"max_ram_percentage": 0}, "maxRAMPercentage", id="zero-percent"),
        pytest.param({"max_metaspace": 0}, "maxMetaspace", id="zero-metaspace"),
    ],
)
def test_jvm_rule_refuses_naming_the_field(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        JvmRuntimeRule(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("n", "text"),
    [(GIB, "1g"), (768 * MIB, "768m"), (512 * 1024, "512k"), (1000, "1000")],
)
def test_jvm_size(n: int, text: str) -> None:
    assert jvm_size(n) == text
