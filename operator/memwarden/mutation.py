"""Pod + governing policy -> what to change: a JSONPatch, and the pod's drift from the policy.

Pure: takes the pod as a dict (as the API server sends it), returns values. The same
plan serves admission (apply ``ops``) and status (a running pod whose plan still has
changes has drifted). Computing the plan on a pod that already had it applied gives no
operations: the patch is idempotent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from memwarden.api import APPLIED_ANNOTATION, MemoryPolicySpec
from memwarden.heap import compact_json
from memwarden.quantity import (
    QuantityError,
    format_bytes,
    parse_bytes,
    parse_millicores,
    readable_bytes,
)
from memwarden.runtime_options import (
    JAVA_TOOL_OPTIONS,
    NODE_OPTIONS,
    heap_limit,
    jvm_setting,
    merge_options,
    node_setting,
)
from memwarden.runtime_sizing import JvmRuntimeRule, NodeRuntimeRule, size_runtimes
from memwarden.selection import Selection
from memwarden.sizing import (
    ContainerResources,
    ContainerSizing,
    GoRuntimeRule,
    KubeletProfile,
    MemoryRule,
    PodShape,
    PodSizing,
    size_pod,
)

JsonPatch = list[dict[str, Any]]


class PodShapeError(ValueError):
    """The pod's spec cannot be read (a malformed quantity...); the message names the field."""


def _escape(segment: str) -> str:
    """JSON Pointer escaping (RFC 6901)."""
    return segment.replace("~", "~0").replace("/", "~1")


def _quantity(value: object, *, where: str, cpu: bool = False) -> int | None:
    if value is None:
        return None
    try:
        return parse_millicores(str(value)) if cpu else parse_bytes(str(value))
    except QuantityError as exc:
        raise PodShapeError(f"{where}: {exc}") from exc


def _mapping(value: object, *, where: str) -> Mapping[str, Any]:
    """``value`` if it is a map, ``{}`` if absent; a forged review can hold anything."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PodShapeError(f"{where}: not a map")
    return value


def _mappings(value: object, *, where: str) -> list[Mapping[str, Any]]:
    """``value`` if it is a list of maps, ``[]`` if absent."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise PodShapeError(f"{where}: not a list")
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise PodShapeError(f"{where}[{i}]: not a map")
    return value


def _container_resources(
    container: Mapping[str, Any], *, where: str, sidecar: bool = False
) -> ContainerResources:
    resources = _mapping(container.get("resources"), where=f"{where}.resources")
    requests = _mapping(resources.get("requests"), where=f"{where}.resources.requests")
    limits = _mapping(resources.get("limits"), where=f"{where}.resources.limits")
    _mappings(container.get("env"), where=f"{where}.env")  # read by the env ops
    name = container.get("name")
    if not isinstance(name, str) or not name:
        raise PodShapeError(f"{where}.name: missing")
    try:
        return ContainerResources(
            name=name,
            cpu_request_m=_quantity(
                requests.get("cpu"), where=f"{where}.resources.requests.cpu", cpu=True
            ),
            cpu_limit_m=_quantity(
                limits.get("cpu"), where=f"{where}.resources.limits.cpu", cpu=True
            ),
            memory_request=_quantity(
                requests.get("memory"), where=f"{where}.resources.requests.memory"
            ),
            memory_limit=_quantity(limits.get("memory"), where=f"{where}.resources.limits.memory"),
            sidecar=sidecar,
        )
    except ValueError as exc:
        if isinstance(exc, PodShapeError):
            raise
        raise PodShapeError(f"{where}: {exc}") from exc


def pod_shape(pod: Mapping[str, Any]) -> PodShape:
    """The pod's resources as sizing reads them."""
    spec = pod.get("spec")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("containers"), list):
        raise PodShapeError("spec.containers: missing")
    containers = tuple(
        _container_resources(c, where=f"spec.containers[{i}]")
        for i, c in enumerate(_mappings(spec["containers"], where="spec.containers"))
    )
    init = tuple(
        _container_resources(
            c, where=f"spec.initContainers[{i}]", sidecar=c.get("restartPolicy") == "Always"
        )
        for i, c in enumerate(_mappings(spec.get("initContainers"), where="spec.initContainers"))
    )
    overhead = _quantity(
        _mapping(spec.get("overhead"), where="spec.overhead").get("memory"),
        where="spec.overhead.memory",
    )
    pod_resources = (
        _container_resources({"name": "(pod)", "resources": spec["resources"]}, where="spec")
        if spec.get("resources") is not None
        else None
    )
    try:
        return PodShape(
            containers=containers,
            init_containers=init,
            overhead_memory=overhead,
            pod_resources=pod_resources,
        )
    except ValueError as exc:
        raise PodShapeError(str(exc)) from exc


def memory_rule(spec: MemoryPolicySpec) -> MemoryRule:
    """The policy's memory section in bytes."""
    m = spec.memory
    if m is None:
        return MemoryRule()

    def b(value: str | None) -> int | None:
        return None if value is None else parse_bytes(value)

    return MemoryRule(
        request=b(m.request), limit=b(m.limit), protect=b(m.protect), high=b(m.high), max=b(m.max)
    )


def go_rule(spec: MemoryPolicySpec) -> GoRuntimeRule | None:
    """The policy's Go runtime section (None: touch no Go variables)."""
    go = spec.runtime.go if spec.runtime else None
    if go is None or (go.memoryLimit is None and go.gogc is None):
        return None
    limit = go.memoryLimit
    if limit is not None and limit.endswith("%"):
        return GoRuntimeRule(memory_limit_percent=float(limit[:-1]), gogc=go.gogc)
    return GoRuntimeRule(
        memory_limit_bytes=None if limit is None else parse_bytes(limit), gogc=go.gogc
    )


def jvm_rule(spec: MemoryPolicySpec) -> JvmRuntimeRule | None:
    """The policy's JVM section (None: leave JAVA_TOOL_OPTIONS alone)."""
    jvm = spec.runtime.jvm if spec.runtime else None
    if jvm is None:
        return None

    def b(value: str | None) -> int | None:
        return None if value is None else parse_bytes(value)

    rule = JvmRuntimeRule(
        max_ram_percentage=jvm.maxRAMPercentage,
        max_heap=b(jvm.maxHeap),
        max_metaspace=b(jvm.maxMetaspace),
        max_direct_memory=b(jvm.maxDirectMemory),
    )
    return None if rule == JvmRuntimeRule() else rule


def node_rule(spec: MemoryPolicySpec) -> NodeRuntimeRule | None:
    """The policy's Node.js section (None: leave NODE_OPTIONS alone)."""
    node = spec.runtime.node if spec.runtime else None
    if node is None or node.maxOldSpaceSize is None:
        return None
    size = node.maxOldSpaceSize
    if size.endswith("%"):
        return NodeRuntimeRule(max_old_space_percent=float(size[:-1]))
    return NodeRuntimeRule(max_old_space_bytes=parse_bytes(size))


#: The option variables memwarden merges into: variable -> (policy section, flag reader).
OPTION_VARIABLES: dict[str, tuple[str, Any]] = {
    JAVA_TOOL_OPTIONS: ("jvm", jvm_setting),
    NODE_OPTIONS: ("node", node_setting),
}


def option_override(spec: MemoryPolicySpec, variable: str) -> bool:
    """Whether the policy's section for ``variable`` has ``overrideExisting`` set."""
    section = getattr(spec.runtime, OPTION_VARIABLES[variable][0], None) if spec.runtime else None
    return bool(section and section.overrideExisting)


def injected_options(sized: ContainerSizing) -> dict[str, str]:
    """Option variable -> the flags memwarden injects into it (space-separated)."""
    return {
        var: " ".join(flags)
        for var, flags in (
            (JAVA_TOOL_OPTIONS, sized.java_tool_options),
            (NODE_OPTIONS, sized.node_options),
        )
        if flags
    }


@dataclass(frozen=True)
class PodPlan:
    """What memwarden does to one pod, and how the pod differs from its policy now."""

    selection: Selection
    sizing: PodSizing | None = None
    ops: tuple[dict[str, Any], ...] = ()
    """Changes to resources and env, then the annotation (JSONPatch, in order)."""
    drift: tuple[str, ...] = ()
    """Each difference between the pod and the policy, one line each (empty: compliant)."""
    notes: tuple[str, ...] = ()
    applied: Mapping[str, Any] = field(default_factory=dict)
    """What the annotation records: policy and per-container values."""

    @property
    def policy(self) -> str | None:
        return self.selection.winner.key if self.selection.winner else None

    @property
    def infeasible(self) -> str | None:
        return self.sizing.infeasible if self.sizing else None

    @property
    def compliant(self) -> bool:
        return not self.drift and self.infeasible is None


def _container_index(pod: Mapping[str, Any]) -> dict[str, tuple[str, int, Mapping[str, Any]]]:
    """Container name -> (spec list, index, container)."""
    spec = pod["spec"]
    index: dict[str, tuple[str, int, Mapping[str, Any]]] = {}
    for list_name in ("containers", "initContainers"):
        for i, container in enumerate(spec.get(list_name) or []):
            index[container["name"]] = (list_name, i, container)
    return index


def _resource_ops(
    *, path: str, container: Mapping[str, Any], sized: ContainerSizing
) -> tuple[JsonPatch, list[str]]:
    """Ops that set the container's memory request and limit to the sized values."""
    resources = container.get("resources")
    changes: dict[str, int | None] = {}
    drift: list[str] = []
    for kind, wanted in (("requests", sized.memory_request), ("limits", sized.memory_limit)):
        current_text = ((resources or {}).get(kind) or {}).get("memory")
        current = None if current_text is None else parse_bytes(str(current_text))
        if current == wanted:
            continue
        changes[kind] = wanted
        noun = "request" if kind == "requests" else "limit"
        shown = format_bytes(wanted) if wanted is not None else "unset"
        drift.append(f"{sized.name}: memory {noun} {current_text or 'unset'}, policy wants {shown}")

    if not resources:
        value = {k: {"memory": format_bytes(v)} for k, v in changes.items() if v is not None}
        return (
            [{"op": "add", "path": f"{path}/resources", "value": value}] if value else []
        ), drift
    ops: JsonPatch = []
    for kind, wanted in changes.items():
        if wanted is None:
            ops.append({"op": "remove", "path": f"{path}/resources/{kind}/memory"})
        elif not resources.get(kind):
            ops.append(
                {
                    "op": "add",
                    "path": f"{path}/resources/{kind}",
                    "value": {"memory": format_bytes(wanted)},
                }
            )
        else:
            ops.append(
                {
                    "op": "add",
                    "path": f"{path}/resources/{kind}/memory",
                    "value": format_bytes(wanted),
                }
            )
    return ops, drift


def _env_position(env: Sequence[Mapping[str, Any]], var: str) -> int | None:
    return next((i for i, e in enumerate(env) if e.get("name") == var), None)


def _set_env(*, path: str, position: int | None, var: str, value: str) -> dict[str, Any]:
    """The op that sets ``var``: appended when absent, else replacing its entry."""
    if position is None:
        return {"op": "add", "path": f"{path}/env/-", "value": {"name": var, "value": value}}
    return {
        "op": "replace",
        "path": f"{path}/env/{position}",
        "value": {"name": var, "value": value},
    }


def _env_ops(
    *, path: str, container: Mapping[str, Any], wanted: Mapping[str, str], override: bool
) -> tuple[JsonPatch, list[str], list[str]]:
    """Ops that make the container's env carry ``wanted``, respecting existing entries."""
    ops: JsonPatch = []
    drift: list[str] = []
    notes: list[str] = []
    env: Sequence[Mapping[str, Any]] = container.get("env") or []
    name = container["name"]
    if not wanted:
        return ops, drift, notes
    if container.get("env") is None:
        ops.append({"op": "add", "path": f"{path}/env", "value": []})
    for var, value in wanted.items():
        position = _env_position(env, var)
        if position is None:
            ops.append(_set_env(path=path, position=None, var=var, value=value))
            drift.append(f"{name}: {var} unset, policy wants {value}")
            continue
        existing = env[position]
        if existing.get("value") == value and "valueFrom" not in existing:
            continue
        shown = "valueFrom" if "valueFrom" in existing else repr(existing.get("value"))
        if not override:
            notes.append(
                f"{name}: keeps its own {var} ({shown}); "
                "set runtime.go.overrideExisting to replace it"
            )
            continue
        ops.append(_set_env(path=path, position=position, var=var, value=value))
        drift.append(f"{name}: {var} is {shown}, policy wants {value}")
    return ops, drift, notes


def _option_ops(
    *,
    path: str,
    container: Mapping[str, Any],
    wanted: Mapping[str, str],
    spec: MemoryPolicySpec,
    memory_max: int | None,
) -> tuple[JsonPatch, list[str], list[str]]:
    """Ops that merge our flags into JAVA_TOOL_OPTIONS / NODE_OPTIONS, keeping the
    container's own flags (``runtime_options.merge_options``).

    Needs the container's ``env`` list to exist (``_env_ops`` adds it first)."""
    ops: JsonPatch = []
    drift: list[str] = []
    notes: list[str] = []
    env: Sequence[Mapping[str, Any]] = container.get("env") or []
    name = container["name"]
    for var, flags in wanted.items():
        section, setting_of = OPTION_VARIABLES[var]
        position = _env_position(env, var)
        if position is None:
            ops.append(_set_env(path=path, position=None, var=var, value=flags))
            drift.append(f"{name}: {var} unset, policy wants {flags}")
            continue
        existing = env[position]
        if "valueFrom" in existing:
            notes.append(
                f"{name}: keeps its own {var} (valueFrom): memwarden cannot merge into a value"
                f" it cannot read, so {flags} is not injected"
            )
            continue
        current = existing.get("value")
        merged = merge_options(
            current if isinstance(current, str) else None,
            flags.split(" "),
            setting_of=setting_of,
            override=option_override(spec, var),
        )
        for kept in merged.kept:
            notes.append(
                f"{name}: keeps its own {kept} in {var}; set runtime.{section}.overrideExisting"
                " to replace it"
            )
            size = heap_limit(kept)
            if size is not None and memory_max is not None and size > memory_max:
                notes.append(
                    f"{name}: its own {kept} is above memory.max {readable_bytes(memory_max)}:"
                    " the OOM killer would act before the runtime's GC"
                )
        if merged.value == current:
            continue
        ops.append(_set_env(path=path, position=position, var=var, value=merged.value))
        change = f"adds {' '.join(merged.added)}"
        if merged.replaced:
            change += f" in place of {' '.join(merged.replaced)}"
        drift.append(f"{name}: {var} is {current!r}, policy {change}")
    return ops, drift, notes


def applied_record(*, policy: str, generation: int | None, sizing: PodSizing) -> dict[str, Any]:
    """The ``memwarden.dev/applied`` annotation's content."""
    containers: dict[str, dict[str, str]] = {}
    for c in sizing.containers:
        entry: dict[str, str] = {}
        if c.memory_request is not None:
            entry["request"] = format_bytes(c.memory_request)
        if c.memory_limit is not None:
            entry["limit"] = format_bytes(c.memory_limit)
        if c.gomemlimit_env is not None:
            entry["GOMEMLIMIT"] = c.gomemlimit_env
        if c.gogc is not None:
            entry["GOGC"] = c.gogc
        entry.update(injected_options(c))
        containers[c.name] = entry
    record: dict[str, Any] = {"policy": policy, "containers": containers}
    if generation is not None:
        record["generation"] = generation
    return record


def plan_pod(
    *,
    pod: Mapping[str, Any],
    selection: Selection,
    profile: KubeletProfile,
    generation: int | None = None,
) -> PodPlan:
    """Decide what the governing policy changes in ``pod`` (nothing when none governs it)."""
    winner = selection.winner
    if winner is None:
        return PodPlan(selection=selection)
    spec = winner.spec
    shape = pod_shape(pod)
    metadata = _mapping(pod.get("metadata"), where="metadata")
    annotations = _mapping(metadata.get("annotations"), where="metadata.annotations")
    rule, runtime = memory_rule(spec), go_rule(spec)
    sizing = size_pod(
        pod=shape, governed=selection.governed, rule=rule, runtime=runtime, profile=profile
    )
    sizing = size_runtimes(sizing, jvm=jvm_rule(spec), node=node_rule(spec))
    if sizing.infeasible is not None:
        return PodPlan(selection=selection, sizing=sizing, notes=sizing.notes)

    ops: JsonPatch = []
    drift: list[str] = []
    notes: list[str] = list(sizing.notes)
    index = _container_index(pod)
    override = bool(spec.runtime and spec.runtime.go and spec.runtime.go.overrideExisting)
    for sized in sizing.containers:
        list_name, i, container = index[sized.name]
        path = f"/spec/{list_name}/{i}"
        if not rule.is_empty:
            resource_ops, resource_drift = _resource_ops(
                path=path, container=container, sized=sized
            )
            ops += resource_ops
            drift += resource_drift
        wanted: dict[str, str] = {}
        if sized.gomemlimit_env is not None:
            wanted["GOMEMLIMIT"] = sized.gomemlimit_env
        if sized.gogc is not None:
            wanted["GOGC"] = sized.gogc
        options = injected_options(sized)
        if options and not wanted and container.get("env") is None:
            ops.append({"op": "add", "path": f"{path}/env", "value": []})
        env_ops, env_drift, env_notes = _env_ops(
            path=path, container=container, wanted=wanted, override=override
        )
        option_ops, option_drift, option_notes = _option_ops(
            path=path,
            container=container,
            wanted=options,
            spec=spec,
            memory_max=sized.cgroup.memory_max,
        )
        ops += env_ops + option_ops
        drift += env_drift + option_drift
        notes += env_notes + option_notes
        notes += [f"{sized.name}: {note}" for note in sized.notes]

    record = applied_record(policy=winner.key, generation=generation, sizing=sizing)
    encoded = json.dumps(record, sort_keys=True, separators=(",", ":"))
    if annotations.get(APPLIED_ANNOTATION) != encoded:
        if not annotations:
            ops.append(
                {
                    "op": "add",
                    "path": "/metadata/annotations",
                    "value": {APPLIED_ANNOTATION: encoded},
                }
            )
        else:
            ops.append(
                {
                    "op": "add",
                    "path": f"/metadata/annotations/{_escape(APPLIED_ANNOTATION)}",
                    "value": encoded,
                }
            )
    return PodPlan(
        selection=selection,
        sizing=sizing,
        ops=tuple(ops),
        drift=tuple(drift),
        notes=tuple(notes),
        applied=record,
    )


class PlanCache:
    """Plans by (policy, pod shape): the pods of a Deployment are alike, and sizing each
    again costs ~10x the look-up. Shared by admission and status. Bounded; the oldest
    entry goes first.

    The key is the bytes of every pod field a plan reads (containers' names, resources,
    env, restartPolicy; overhead; the applied annotation) and the governing policy's
    name; an entry is used only for the
    same selection (its policies compared by identity: an updated policy is a new
    object, so its old entries are never served) and an equal kubelet profile.
    """

    def __init__(self, size: int = 4096, max_bytes: int = 4 * 2**20) -> None:
        """``max_bytes`` bounds the keys and error texts held, as ``size`` bounds their
        number: a real pod's key is about a kilobyte (4 MiB holds the 4,096 of them), but
        a forged review's pod can be megabytes, and 4,096 of those would be gigabytes (the
        HTTP fuzz tests' distinct large pods). A key over ``max_bytes`` alone is planned
        and not kept."""
        self.size = size
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: dict[bytes, tuple[Selection, KubeletProfile, PodPlan | str]] = {}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _cost(key: bytes, result: PodPlan | str) -> int:
        return len(key) + (len(result) if isinstance(result, str) else 0)

    def _keep(self, key: bytes, entry: tuple[Selection, KubeletProfile, PodPlan | str]) -> None:
        """Store ``entry``, evicting the oldest until it fits in ``size`` and ``max_bytes``."""
        cost = self._cost(key, entry[2])
        stale = self._entries.pop(key, None)
        if stale is not None:
            self.bytes -= self._cost(key, stale[2])
        if cost > self.max_bytes:
            return
        while self._entries and (
            len(self._entries) >= self.size or self.bytes + cost > self.max_bytes
        ):
            oldest = next(iter(self._entries))
            self.bytes -= self._cost(oldest, self._entries.pop(oldest)[2])
        self._entries[key] = entry
        self.bytes += cost

    @staticmethod
    def shape_of(pod: Mapping[str, Any]) -> bytes:
        """What ``plan_pod`` reads of ``pod``, as bytes."""
        spec = pod.get("spec") or {}
        annotations = (pod.get("metadata") or {}).get("annotations")

        def read(containers: Any) -> list[Any]:
            return [
                [c.get("name"), c.get("resources"), c.get("env"), c.get("restartPolicy")]
                if isinstance(c, Mapping)
                else c
                for c in (containers if isinstance(containers, list) else [containers])
            ]

        applied = annotations.get(APPLIED_ANNOTATION) if isinstance(annotations, Mapping) else None
        return compact_json(
            [
                read(spec.get("containers")) if isinstance(spec, Mapping) else spec,
                read(spec.get("initContainers")) if isinstance(spec, Mapping) else None,
                spec.get("overhead") if isinstance(spec, Mapping) else None,
                bool(annotations),
                applied,
            ]
        )

    def plan(
        self, *, pod: Mapping[str, Any], selection: Selection, profile: KubeletProfile
    ) -> PodPlan:
        """``plan_pod``, or the plan of an earlier pod of the same shape and selection."""
        try:
            key = self.shape_of(pod)
        except orjson.JSONEncodeError:  # an integer past 64 bits, nesting past 254: no key
            return plan_pod(pod=pod, selection=selection, profile=profile)
        # The governing policy is part of the key: alike pods of two namespaces (or two
        # policies) would otherwise take turns evicting each other's entry.
        if selection.winner is not None:
            key += selection.winner.key.encode()
        entry = self._entries.get(key)
        if entry is not None and entry[1] == profile and _same_policies(entry[0], selection):
            self.hits += 1
            result = entry[2]
        else:
            self.misses += 1
            try:
                result = plan_pod(pod=pod, selection=selection, profile=profile)
            except PodShapeError as exc:
                result = str(exc)  # a fresh error each time: a re-raised one grows its traceback
            self._keep(key, (selection, profile, result))
        if isinstance(result, str):
            raise PodShapeError(result)
        return result


def planned(
    *,
    pod: Mapping[str, Any],
    selection: Selection,
    profile: KubeletProfile,
    cache: PlanCache | None = None,
) -> PodPlan:
    """``plan_pod``, through ``cache`` when there is one."""
    if cache is None:
        return plan_pod(pod=pod, selection=selection, profile=profile)
    return cache.plan(pod=pod, selection=selection, profile=profile)


def _same_policies(a: Selection, b: Selection) -> bool:
    return (
        a.winner is b.winner
        and len(a.others) == len(b.others)
        and all(x is y for x, y in zip(a.others, b.others, strict=True))
    )


def admission_ops(plan: PodPlan, *, dry_run: bool = False) -> list[dict[str, Any]]:
    """The JSONPatch admission applies: none in Audit mode, dry-run, or when infeasible."""
    winner = plan.selection.winner
    if winner is None or winner.spec.mode == "Audit" or dry_run or plan.infeasible:
        return []
    return [dict(op) for op in plan.ops]
