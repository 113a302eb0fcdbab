"""Sizing a whole pod: each container's rule applied, the pod's QoS kept or refused."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace

from memwarden.quantity import format_go_bytes, readable_bytes
from memwarden.sizing.cgroup import CgroupValues, expected_cgroup, expected_pod_cgroup
from memwarden.sizing.constants import QosClass, _amount
from memwarden.sizing.profile import KubeletProfile
from memwarden.sizing.rules import (
    GoRuntimeRule,
    MemoryRule,
    ResolvedMemory,
    _go_settings,
    resolve_rule,
)
from memwarden.sizing.shape import ContainerResources, PodShape, qos_class

# --------------------------------------------------------------------------- the pod


@dataclass(frozen=True)
class ContainerSizing:
    """What a governed container gets: resources, the kubelet's cgroup files, Go env."""

    name: str
    memory_request: int | None
    """After API defaulting (an unset request takes the limit)."""
    memory_limit: int | None
    cgroup: CgroupValues
    gomemlimit: int | None = None
    gomemlimit_env: str | None = None
    """GOMEMLIMIT as the Go runtime reads it (``1843MiB``)."""
    gogc: str | None = None
    java_tool_options: tuple[str, ...] | None = None
    """The flags memwarden merges into JAVA_TOOL_OPTIONS (``runtime_sizing``)."""
    node_options: tuple[str, ...] | None = None
    """The flags memwarden merges into NODE_OPTIONS (``runtime_sizing``)."""
    jvm_max_heap: int | None = None
    """The JVM's maximum heap those flags give (before the JVM's alignment)."""
    node_max_old_space: int | None = None
    """V8's old space those flags give."""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PodSizing:
    """The decision for one pod; ``infeasible`` says why nothing should be applied.

    When infeasible, ``containers`` is empty and the rest describes the pod as it is.
    """

    qos_class: QosClass
    containers: tuple[ContainerSizing, ...]
    pod_cgroup: CgroupValues
    infeasible: str | None = None
    notes: tuple[str, ...] = ()


def size_pod(
    *,
    pod: PodShape,
    governed: Collection[str],
    rule: MemoryRule,
    runtime: GoRuntimeRule | None,
    profile: KubeletProfile,
    required_qos: QosClass | None = None,
) -> PodSizing:
    """Apply a policy's memory and Go runtime rules to the governed containers of a pod.

    ``governed`` names regular containers or sidecars. ``required_qos``: the QoS class the
    result must keep (in-place resize can never change it). Containers come back in pod
    order (regular containers, then sidecars).
    """
    if isinstance(governed, str):
        raise TypeError("governed: a collection of container names, not one string")
    notes: list[str] = []
    by_name = {c.name: c for c in pod.long_running}
    plain_init = {c.name for c in pod.init_containers if not c.sidecar}
    for name in sorted(set(governed) - set(by_name)):
        kind = "is an init container" if name in plain_init else "is not in the pod"
        notes.append(f"containers: {name} {kind}; not governed")
    names = {name for name in governed if name in by_name}

    before = qos_class(pod)

    def refused(reason: str) -> PodSizing:
        return PodSizing(
            qos_class=before,
            containers=(),
            pod_cgroup=expected_pod_cgroup(pod, profile),
            infeasible=reason,
            notes=tuple(notes),
        )

    resolved = resolve_rule(rule, profile)
    notes.extend(resolved.notes)
    if resolved.infeasible is not None:
        return refused(resolved.infeasible)
    sized = pod if rule.is_empty else _with_memory(pod, names=names, resolved=resolved)
    after = qos_class(sized)
    if required_qos is not None and after != required_qos:
        return refused(_qos_reason(rule=rule, required=required_qos, result=after))
    if after != before:
        notes.append(f"qos: the pod's QoS class changes from {before} to {after}")
    if rule.protect is not None and profile.has_reservation_policy:
        kind = (
            "memory.min (hard protection)"
            if after == "Guaranteed"
            else "memory.low (soft: the kernel may still reclaim it to avoid a node OOM),"
            " not memory.min"
        )
        notes.append(f"memory.protect: the pod is {after}, so protect is written as {kind}")

    containers = []
    for container in sized.long_running:
        if container.name not in names:
            continue
        result = _size_container(
            container,
            qos=after,
            runtime=runtime,
            profile=profile,
            pod_level_limit=sized.pod_memory_limit > 0,
        )
        if isinstance(result, str):
            return refused(f"{result} (container {container.name})")
        containers.append(result)
    return PodSizing(
        qos_class=after,
        containers=tuple(containers),
        pod_cgroup=expected_pod_cgroup(sized, profile),
        notes=tuple(notes),
    )


def _with_memory(pod: PodShape, *, names: Collection[str], resolved: ResolvedMemory) -> PodShape:
    def apply(c: ContainerResources) -> ContainerResources:
        if c.name not in names:
            return c
        return replace(c, memory_request=resolved.request, memory_limit=resolved.limit)

    return replace(
        pod,
        containers=tuple(apply(c) for c in pod.containers),
        init_containers=tuple(apply(c) for c in pod.init_containers),
    )


def _qos_reason(*, rule: MemoryRule, required: QosClass, result: QosClass) -> str:
    cannot = f"this pod is {required} and its QoS class cannot change (in-place resize)"
    if required == "Guaranteed" and rule.high is not None:
        return (
            f"memory.high: a memory.high needs request < limit, which makes the pod"
            f" {result}; {cannot}"
        )
    if required == "Guaranteed":
        return (
            f"memory: the policy leaves request < limit (or no limit), which makes the pod"
            f" {result}; {cannot}"
        )
    if result == "Guaranteed":
        return f"memory: request == limit makes the pod Guaranteed; {cannot}"
    return f"memory: the policy makes the pod {result}; {cannot}"


def _size_container(
    container: ContainerResources,
    *,
    qos: QosClass,
    runtime: GoRuntimeRule | None,
    profile: KubeletProfile,
    pod_level_limit: bool = False,
) -> ContainerSizing | str:
    """One governed container's sizing, or the reason it is infeasible."""
    request = container.memory_request_effective
    limit = _amount(container.memory_limit)
    cgroup = expected_cgroup(
        request=request,
        limit=limit,
        qos_class=qos,
        profile=profile,
        pod_level_limit=pod_level_limit,
    )
    notes: list[str] = []
    under_pod_high = profile.has_pod_level_memory_high and pod_level_limit and not limit
    uses_node = (
        profile.throttles
        and not limit
        and (request > 0 or profile.throttles_unrequested)
        and not under_pod_high
    )
    if under_pod_high:
        notes.append(
            "memory.high: not written on the container: it has no limit and the pod sets a"
            " pod-level memory limit, so the kubelet throttles at the pod cgroup's memory.high"
        )
    if uses_node and profile.node_allocatable is None:
        notes.append(
            "memory.high: not predicted: with no limit the kubelet uses the node's allocatable"
            " memory; set nodeAllocatable in the kubelet profile to predict it"
        )
    elif uses_node and cgroup.memory_high is not None:
        notes.append(
            "memory.high: from node allocatable"
            f" {readable_bytes(_amount(profile.node_allocatable))}"
            " (no limit); it differs per node"
        )
    if profile.throttles and limit and request == limit:
        notes.append("memory.high: not written: request == limit")

    gomemlimit = None
    gogc = None
    if runtime is not None:
        go = _go_settings(runtime=runtime, cgroup=cgroup, high_from_node=uses_node)
        if go.infeasible is not None:
            return go.infeasible
        gomemlimit = go.gomemlimit
        gogc = runtime.gogc
        notes.extend(go.notes)
    return ContainerSizing(
        name=container.name,
        memory_request=request or None,
        memory_limit=limit or None,
        cgroup=cgroup,
        gomemlimit=gomemlimit,
        gomemlimit_env=None if gomemlimit is None else format_go_bytes(gomemlimit),
        gogc=gogc,
        notes=tuple(notes),
    )
