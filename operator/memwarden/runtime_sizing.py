"""JVM and Node.js memory contracts: a container's cgroup values -> the flags its runtime gets.

Pure, like ``sizing`` (whose results it extends): no Kubernetes client, no I/O. The base
is GOMEMLIMIT's (memory.high when the kubelet writes it, else memory.max); the flags go
into ``JAVA_TOOL_OPTIONS`` / ``NODE_OPTIONS``, merged with the container's own by
``mutation`` (``runtime_options``). The rules and their numbers are in docs/sizing.md.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Final

from memwarden.quantity import readable_bytes
from memwarden.sizing import (
    HEADROOM_FRACTION,
    HEADROOM_MIN,
    MIB,
    CgroupValues,
    ContainerSizing,
    PodSizing,
)

__all__ = [
    "JVM_THREAD_STACKS",
    "V8_YOUNG_GENERATION",
    "JvmRuntimeRule",
    "NodeRuntimeRule",
    "jvm_size",
    "size_runtimes",
]

#: Thread stacks the headroom check counts for a JVM: 64 threads at the default -Xss of
#: 1 MiB (x86-64). A small service runs a few dozen threads (GC, JIT, pools); stacks are
#: committed as they grow, so this is an upper estimate for such a service, not a bound.
JVM_THREAD_STACKS: Final = 64 * MIB
#: V8's young generation beside the old space: three semi-spaces of 16 MiB on 64-bit
#: (Node.js 20 measured: heap_size_limit = --max-old-space-size + 48 MiB).
V8_YOUNG_GENERATION: Final = 48 * MIB
#: Decimal places of a MaxRAMPercentage memwarden computes (rounded down: never more heap).
_PERCENT_PLACES: Final = 4


@dataclass(frozen=True)
class JvmRuntimeRule:
    """A policy's ``runtime.jvm``: the heap (percent or bytes), metaspace, direct memory."""

    max_ram_percentage: float | None = None
    """Percent of memory.high when the kubelet writes it, else of memory.max."""
    max_heap: int | None = None
    max_metaspace: int | None = None
    max_direct_memory: int | None = None

    def __post_init__(self) -> None:
        field = "runtime.jvm"
        if self.max_ram_percentage is not None and self.max_heap is not None:
            raise ValueError(f"{field}: maxRAMPercentage or maxHeap, not both")
        p = self.max_ram_percentage
        if p is not None and (isinstance(p, bool) or not 0 < p <= 100):
            raise ValueError(f"{field}.maxRAMPercentage: must be in (0, 100], got {p}")
        for name, value in (
            ("maxHeap", self.max_heap),
            ("maxMetaspace", self.max_metaspace),
            ("maxDirectMemory", self.max_direct_memory),
        ):
            if value is not None and value <= 0:
                raise ValueError(f"{field}.{name}: must be positive, got {value}")


@dataclass(frozen=True)
class NodeRuntimeRule:
    """A policy's ``runtime.node``: V8's old space, percent of the base or bytes."""

    max_old_space_percent: float | None = None
    max_old_space_bytes: int | None = None

    def __post_init__(self) -> None:
        field = "runtime.node.maxOldSpaceSize"
        if self.max_old_space_percent is not None and self.max_old_space_bytes is not None:
            raise ValueError(f"{field}: a percentage or a quantity, not both")
        p = self.max_old_space_percent
        if p is not None and (isinstance(p, bool) or not 0 < p <= 100):
            raise ValueError(f"{field}: percent must be in (0, 100], got {p}")
        if self.max_old_space_bytes is not None and self.max_old_space_bytes < MIB:
            raise ValueError(f"{field}: at least 1Mi, got {self.max_old_space_bytes}")


def jvm_size(n: int) -> str:
    """Bytes as a JVM size option value: ``1g``, ``768m``, ``512k`` when exact, else bytes."""
    for unit, suffix in ((2**30, "g"), (2**20, "m"), (2**10, "k")):
        if n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def _percent_text(value: Fraction) -> str:
    """A percentage with at most four decimals, rounded down, without trailing zeros."""
    scaled = math.floor(value * 10**_PERCENT_PLACES)
    whole, frac = divmod(scaled, 10**_PERCENT_PLACES)
    return f"{whole}.{frac:0{_PERCENT_PLACES}d}".rstrip("0").rstrip(".")


def _base(cgroup: CgroupValues) -> tuple[int | None, str]:
    if cgroup.memory_high is not None:
        return cgroup.memory_high, "memory.high"
    return cgroup.memory_max, "memory.max"


def _headroom_note(
    *, field: str, what: str, used: int, memory_max: int | None, parts: str
) -> str | None:
    """The Go rule's headroom check applied to a runtime's estimated footprint."""
    if memory_max is None:
        return None
    wanted = max(math.ceil(memory_max * HEADROOM_FRACTION), HEADROOM_MIN)
    left = memory_max - used
    if left >= wanted:
        return None
    where = (
        f"leaves {readable_bytes(left)} below memory.max {readable_bytes(memory_max)}, less than"
        if left >= 0
        else f"is {readable_bytes(-left)} above memory.max {readable_bytes(memory_max)}, which"
        " needs"
    )
    return (
        f"{field}: {what} {readable_bytes(used)} ({parts}) {where} {readable_bytes(wanted)}"
        " of headroom (5% or 32Mi, the GOMEMLIMIT rule): little room for the rest of the"
        " process, an OOM kill is likely before the runtime's own limit is reached"
    )


@dataclass(frozen=True)
class _Settings:
    options: tuple[str, ...] = ()
    limit: int | None = None
    """The runtime's resulting limit in bytes (the JVM's heap, V8's old space)."""
    infeasible: str | None = None
    notes: tuple[str, ...] = ()


# Cached, as sizing's parsing is: a fleet's pods repeat few (rule, cgroup) pairs, and the
# notes' text costs more than the rest of an admission's plan.
@functools.lru_cache(maxsize=1024)
def _jvm(rule: JvmRuntimeRule, cgroup: CgroupValues) -> _Settings:
    field = "runtime.jvm"
    notes: list[str] = []
    options: list[str] = []
    memory_max, memory_high = cgroup.memory_max, cgroup.memory_high
    heap: int | None = None
    if rule.max_heap is not None:
        heap = rule.max_heap
        if memory_max is not None and heap > memory_max:
            return _Settings(
                infeasible=f"{field}.maxHeap: -Xmx {readable_bytes(heap)} is above memory.max"
                f" {readable_bytes(memory_max)}: the OOM killer would act before the JVM's GC"
            )
        if memory_high is not None and heap > memory_high:
            notes.append(
                f"{field}.maxHeap: -Xmx {readable_bytes(heap)} is above memory.high"
                f" {readable_bytes(memory_high)}: the kernel throttles before the GC reacts"
            )
        options.append(f"-Xmx{jvm_size(heap)}")
    elif rule.max_ram_percentage is not None:
        percent = Fraction(str(rule.max_ram_percentage))
        base, base_name = _base(cgroup)
        if base is None or memory_max is None:
            options.append(f"-XX:MaxRAMPercentage={_percent_text(percent)}")
            notes.append(
                f"{field}.maxRAMPercentage: no memory limit: the JVM takes"
                f" {float(percent):g}% of the node's memory, whatever it is"
            )
        else:
            # The JVM applies MaxRAMPercentage to memory.max, so a percentage of
            # memory.high is scaled to the same bytes as a percentage of memory.max.
            scaled = percent * base / memory_max
            text = _percent_text(scaled)
            heap = math.floor(memory_max * Fraction(text) / 100)
            if heap <= 0:
                return _Settings(
                    infeasible=f"{field}.maxRAMPercentage: {float(percent):g}% of {base_name}"
                    f" {readable_bytes(base)} gives no heap"
                )
            options.append(f"-XX:MaxRAMPercentage={text}")
            how = (
                f"{text}% of memory.max {readable_bytes(memory_max)}, i.e."
                f" {float(percent):g}% of memory.high {readable_bytes(base)}"
                if base_name == "memory.high"
                else f"{text}% of memory.max {readable_bytes(memory_max)}"
            )
            notes.append(
                f"{field}.maxRAMPercentage: heap {readable_bytes(heap)} = {how} (the JVM"
                " rounds it up to its heap alignment, 2 MiB for G1 on 4 KiB pages)"
            )
    if memory_high is not None:
        notes.append(
            f"{field}: the JVM reads memory.max {readable_bytes(memory_max or 0)}, not"
            f" memory.high {readable_bytes(memory_high)}: its ergonomics (default heap,"
            " direct memory) see the limit, not the throttling point, and its GC does not"
            " react to throttling; memory.high throttles the whole process (heap, metaspace,"
            " direct buffers, stacks, code cache), so keep them together below it"
        )
    if rule.max_metaspace is not None:
        options.append(f"-XX:MaxMetaspaceSize={jvm_size(rule.max_metaspace)}")
    if rule.max_direct_memory is not None:
        options.append(f"-XX:MaxDirectMemorySize={jvm_size(rule.max_direct_memory)}")
    if heap is not None:
        meta, direct = rule.max_metaspace or 0, rule.max_direct_memory or 0
        unbounded = [
            name
            for name, value in (
                ("maxMetaspace", rule.max_metaspace),
                ("maxDirectMemory", rule.max_direct_memory),
            )
            if not value
        ]
        parts = (
            f"heap {readable_bytes(heap)}"
            + (f" + metaspace {readable_bytes(meta)}" if meta else "")
            + (f" + direct {readable_bytes(direct)}" if direct else "")
            + f" + thread stacks ~{readable_bytes(JVM_THREAD_STACKS)}"
        )
        note = _headroom_note(
            field=field,
            what="the JVM's estimate",
            used=heap + meta + direct + JVM_THREAD_STACKS,
            memory_max=memory_max,
            parts=parts,
        )
        if note is not None:
            notes.append(note)
        if unbounded and memory_max is not None:
            notes.append(
                f"{field}: {' and '.join(unbounded)} unset: not counted in the headroom, and"
                " unbounded by the JVM (direct memory defaults to the heap size)"
            )
    return _Settings(options=tuple(options), limit=heap, notes=tuple(notes))


@functools.lru_cache(maxsize=1024)
def _node(rule: NodeRuntimeRule, cgroup: CgroupValues) -> _Settings:
    field = "runtime.node.maxOldSpaceSize"
    memory_max = cgroup.memory_max
    notes: list[str] = []
    if rule.max_old_space_bytes is not None:
        value = rule.max_old_space_bytes // MIB * MIB
        if value != rule.max_old_space_bytes:
            notes.append(
                f"{field}: {readable_bytes(rule.max_old_space_bytes)} rounded down to"
                f" {readable_bytes(value)}: the flag is in whole MiB"
            )
    else:
        assert rule.max_old_space_percent is not None
        percent = rule.max_old_space_percent
        base, base_name = _base(cgroup)
        if base is None:
            return _Settings(
                notes=(
                    f"{field}: --max-old-space-size not set: no memory.high and no memory.max"
                    f" to take {percent:g}% of",
                )
            )
        value = math.floor(base * Fraction(str(percent)) / 100) // MIB * MIB
        if value <= 0:
            return _Settings(
                infeasible=f"{field}: {percent:g}% of {base_name} {readable_bytes(base)}"
                " is less than 1 MiB"
            )
        notes.append(
            f"{field}: --max-old-space-size={value // MIB} ({readable_bytes(value)}) ="
            f" {percent:g}% of {base_name} {readable_bytes(base)}, in whole MiB"
        )
    if memory_max is not None and value > memory_max:
        return _Settings(
            infeasible=f"{field}: old space {readable_bytes(value)} is above memory.max"
            f" {readable_bytes(memory_max)}: the OOM killer would act before V8's GC"
        )
    note = _headroom_note(
        field=field,
        what="V8's heap",
        used=value + V8_YOUNG_GENERATION,
        memory_max=memory_max,
        parts=f"old space {readable_bytes(value)} + young generation"
        f" {readable_bytes(V8_YOUNG_GENERATION)}",
    )
    if note is not None:
        notes.append(note)
    return _Settings(
        options=(f"--max-old-space-size={value // MIB}",), limit=value, notes=tuple(notes)
    )


def _container(
    sized: ContainerSizing, *, jvm: JvmRuntimeRule | None, node: NodeRuntimeRule | None
) -> ContainerSizing | str:
    java = _jvm(jvm, sized.cgroup) if jvm is not None else _Settings()
    v8 = _node(node, sized.cgroup) if node is not None else _Settings()
    for settings in (java, v8):
        if settings.infeasible is not None:
            return settings.infeasible
    return replace(
        sized,
        java_tool_options=java.options or None,
        node_options=v8.options or None,
        jvm_max_heap=java.limit,
        node_max_old_space=v8.limit,
        notes=(*sized.notes, *java.notes, *v8.notes),
    )


def size_runtimes(
    sizing: PodSizing, *, jvm: JvmRuntimeRule | None, node: NodeRuntimeRule | None
) -> PodSizing:
    """``sizing`` with each governed container's JVM and Node.js flags, or infeasible."""
    if sizing.infeasible is not None or (jvm is None and node is None):
        return sizing
    containers = []
    for sized in sizing.containers:
        result = _container(sized, jvm=jvm, node=node)
        if isinstance(result, str):
            return replace(sizing, containers=(), infeasible=f"{result} (container {sized.name})")
        containers.append(result)
    return replace(sizing, containers=tuple(containers))
