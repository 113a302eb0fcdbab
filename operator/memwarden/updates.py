"""Update modes: what to do to a running pod so it reaches its policy, and why. Pure.

A pod's view (``status.pod_view``), its plan (``mutation.plan_pod``) and the facts of the
moment (``now``, working sets from Prometheus, the last refusal) come in; a ``PodUpdate``
comes out: resize in place, evict, wait, or nothing, with the reason a person reads in
the policy's status. The handler (handlers/updates.py) acts on it; this module performs
no I/O and reads no clock.

What it never decides: a change of QoS class in place (the API server refuses it), a
resize of anything but memory, an eviction of a pod without a controller, an update of
a pod that is not running on a node, a step that lowers memory by more than the policy's
``maxShrinkPercent`` or below the working set. Pods of never-governed namespaces and
terminating pods never reach it (the pod index drops them).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from memwarden.api import APPLIED_ANNOTATION, MemoryPolicySpec
from memwarden.eviction_gate import not_recreated_why
from memwarden.mutation import (
    OPTION_VARIABLES,
    PodPlan,
    PodShapeError,
    injected_options,
    option_override,
    pod_shape,
)
from memwarden.quantity import QuantityError, format_bytes, parse_bytes, readable_bytes
from memwarden.runtime_options import flag_values, heap_limit
from memwarden.sizing import ContainerResources, ContainerSizing, qos_class
from memwarden.timefmt import seconds_since

Action = Literal["none", "resize", "evict", "wait"]

#: Resize conditions of a pod (KEP-1287, GA in 1.35); ``status.resize`` is deprecated.
RESIZE_PENDING = "PodResizePending"
RESIZE_IN_PROGRESS = "PodResizeInProgress"
_GO_BYTES = re.compile(r"^([0-9]+)(B|KiB|MiB|GiB|TiB)?$")
_GO_UNITS = {None: 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


@dataclass(frozen=True)
class UpdateInputs:
    """What the planner needs besides the pod and its plan; the handler fills it."""

    now: dt.datetime
    enabled: bool = True
    """The operator's kill switch (``updates_enabled``): off, nothing is resized or evicted."""
    working_sets: Mapping[str, int] | None = None
    """Container -> working set bytes from Prometheus; None: Prometheus is not configured."""
    deferred_grace_seconds: float = 300.0
    """How long a Deferred resize may wait before InPlaceOrRecreate evicts instead."""
    refused: str | None = None
    """The API server's last refusal of a resize of this pod (the handler remembers it)."""


@dataclass(frozen=True)
class PodUpdate:
    """The decision for one pod. ``action`` none: nothing to do (or Initial mode)."""

    action: Action = "none"
    reason: str = ""
    resize: Mapping[str, Any] | None = None
    """The body of the ``pods/resize`` patch (strategic merge, memory only)."""
    changes: tuple[str, ...] = ()
    """``app: limit 1Gi -> 2Gi`` per value the resize changes."""
    restarts: tuple[str, ...] = ()
    """Containers the resize restarts (their ``resizePolicy`` for memory is RestartContainer)."""
    stale_runtime: tuple[str, ...] = ()
    """Why the pod's GOMEMLIMIT/GOGC differ from the policy's (env cannot change in place)."""
    updated: bool = False
    """Runs with the policy's memory without having been admitted with it: resized in place."""
    stuck: bool = False
    """Waiting on something that will not change by itself (QoS class, infeasible, refused)."""

    @property
    def pending(self) -> bool:
        return self.action != "none"


@dataclass(frozen=True)
class _Target:
    name: str
    list_name: str
    request: int | None
    limit: int | None
    wanted_request: int | None
    wanted_limit: int | None
    sized: ContainerSizing
    step_request: int | None = None
    step_limit: int | None = None
    notes: tuple[str, ...] = field(default=())


def parse_go_bytes(text: str) -> int | None:
    """A GOMEMLIMIT value (``1843MiB``, ``123B``, ``1000``) in bytes; None if unreadable."""
    match = _GO_BYTES.match(text.strip())
    if match is None:
        return None
    return int(match.group(1)) * _GO_UNITS[match.group(2)]


@functools.lru_cache(maxsize=4096)
def _bytes(text: str) -> int | None:
    """A quantity in bytes, None if unreadable. Cached: a fleet's pods repeat few values,
    and parsing one costs more than the rest of a pod's decision at rest."""
    try:
        return parse_bytes(text)
    except QuantityError:
        return None


def _memory(resources: Mapping[str, Any] | None, kind: str) -> int | None:
    text = ((resources or {}).get(kind) or {}).get("memory")
    return None if text is None else _bytes(str(text))


@functools.lru_cache(maxsize=4096)
def _readable(n: int) -> str:
    return readable_bytes(n)


def _shown(n: int | None) -> str:
    return "unset" if n is None else _readable(n)


def _containers(view: Mapping[str, Any]) -> dict[str, tuple[str, Mapping[str, Any]]]:
    spec = view.get("spec") or {}
    found: dict[str, tuple[str, Mapping[str, Any]]] = {}
    for list_name in ("containers", "initContainers"):
        for container in spec.get(list_name) or []:
            found[str(container.get("name"))] = (list_name, container)
    return found


def _applied(view: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``memwarden.dev/applied`` record admission wrote (empty when none)."""
    text = ((view.get("metadata") or {}).get("annotations") or {}).get(APPLIED_ANNOTATION)
    return _record(text) if isinstance(text, str) and text else {}


@functools.lru_cache(maxsize=1024)
def _record(text: str) -> Mapping[str, Any]:
    """A parsed applied record (pods of one workload share it; never mutated)."""
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, Mapping) else {}


def stale_runtime(
    *, view: Mapping[str, Any], plan: PodPlan, override: bool = False
) -> tuple[str, ...]:
    """Each GOMEMLIMIT/GOGC of a governed container that is not what the policy now wants,
    where memwarden injected it (or injects none yet): env changes only with a new pod.

    A value the container sets itself is its own (kept unless ``overrideExisting``)."""
    if plan.sizing is None or plan.infeasible:
        return ()
    record = (_applied(view).get("containers") or {}) if _applied(view) else {}
    containers = _containers(view)
    lines = []
    for sized in plan.sizing.containers:
        _, container = containers.get(sized.name, ("", {}))
        env = {e.get("name"): e for e in container.get("env") or []}
        ours = record.get(sized.name) or {}
        for var, wanted in (("GOMEMLIMIT", sized.gomemlimit_env), ("GOGC", sized.gogc)):
            if wanted is None:
                continue
            entry = env.get(var)
            if entry is None:
                lines.append(f"{sized.name}: {var} unset, policy wants {wanted}")
                continue
            value = entry.get("value")
            if "valueFrom" not in entry and value == wanted:
                continue
            if override or ("valueFrom" not in entry and ours.get(var) == value):
                lines.append(f"{sized.name}: {var} {value}, policy wants {wanted}")
        lines += _stale_options(
            sized.name, env=env, wanted=injected_options(sized), ours=ours, plan=plan
        )
    return tuple(lines)


def _stale_options(
    name: str,
    *,
    env: Mapping[Any, Mapping[str, Any]],
    wanted: Mapping[str, str],
    ours: Mapping[str, Any],
    plan: PodPlan,
) -> list[str]:
    """Each of our JAVA_TOOL_OPTIONS/NODE_OPTIONS flags the container does not run with,
    where the flag it has is one memwarden injected (or it has none); its own flags are
    its own unless the section's ``overrideExisting``."""
    assert plan.selection.winner is not None
    lines = []
    for var, flags in wanted.items():
        entry = env.get(var)
        if entry is not None and "valueFrom" in entry:
            continue  # never merged into: admission said so
        setting_of = OPTION_VARIABLES[var][1]
        current = flag_values(str((entry or {}).get("value") or ""), setting_of=setting_of)
        injected = flag_values(str(ours.get(var) or ""), setting_of=setting_of)
        override = option_override(plan.selection.winner.spec, var)
        for flag in flags.split(" "):
            setting = setting_of(flag)
            have = current.get(setting)
            if have == flag:
                continue
            if have is None:
                lines.append(f"{name}: {var} lacks {flag}, policy wants it")
            elif override or injected.get(setting) == have:
                lines.append(f"{name}: {var} has {have}, policy wants {flag}")
    return lines


def _injected_gomemlimit(view: Mapping[str, Any], container: str) -> int | None:
    """The GOMEMLIMIT memwarden injected into ``container`` and it still runs with."""
    record = (_applied(view).get("containers") or {}).get(container) or {}
    _, spec = _containers(view).get(container, ("", {}))
    entry = next((e for e in spec.get("env") or [] if e.get("name") == "GOMEMLIMIT"), None)
    if entry is None or "valueFrom" in entry or entry.get("value") != record.get("GOMEMLIMIT"):
        return None
    return parse_go_bytes(str(entry.get("value")))


def _injected_heaps(view: Mapping[str, Any], sized: ContainerSizing) -> list[str]:
    """For each JVM/Node.js heap flag memwarden injected into the container, which it
    still runs with, that the policy now wants changed, and that is above the container's
    new memory.high (else limit): why the runtime would outgrow its cgroup."""
    ceiling = sized.cgroup.memory_high or sized.memory_limit
    if ceiling is None:
        return []
    record = (_applied(view).get("containers") or {}).get(sized.name) or {}
    _, spec = _containers(view).get(sized.name, ("", {}))
    env = {e.get("name"): e for e in spec.get("env") or []}
    wanted = injected_options(sized)
    lines = []
    for var, (_, setting_of) in OPTION_VARIABLES.items():
        entry = env.get(var) or {}
        if "valueFrom" in entry:
            continue
        ours = flag_values(str(record.get(var) or ""), setting_of=setting_of)
        running = flag_values(str(entry.get("value") or ""), setting_of=setting_of)
        policy = flag_values(wanted.get(var, ""), setting_of=setting_of)
        for setting, flag in ours.items():
            size = heap_limit(flag)
            if running.get(setting) != flag or policy.get(setting) == flag or size is None:
                continue
            if size > ceiling:
                where = "memory.high" if sized.cgroup.memory_high else "limit"
                lines.append(
                    f"{sized.name}: its {var} {flag} would be above its new {where}"
                    f" {_shown(ceiling)}"
                )
    return lines


def _restart_policy(container: Mapping[str, Any]) -> str:
    for entry in container.get("resizePolicy") or []:
        if entry.get("resourceName") == "memory":
            return str(entry.get("restartPolicy") or "NotRequired")
    return "NotRequired"


def _step(current: int | None, wanted: int | None, percent: int) -> int | None:
    """``wanted``, or the lowest value one update may reach from ``current``."""
    if current is None or wanted is None or wanted >= current:
        return wanted
    floor = math.ceil(current * (100 - percent) / 100)
    return max(wanted, floor)


def _targets(*, view: Mapping[str, Any], plan: PodPlan) -> list[_Target]:
    """Governed containers whose memory request or limit differ from the policy's."""
    assert plan.sizing is not None
    containers = _containers(view)
    found = []
    for sized in plan.sizing.containers:
        list_name, container = containers[sized.name]
        resources = container.get("resources")
        request, limit = _memory(resources, "requests"), _memory(resources, "limits")
        if (request, limit) == (sized.memory_request, sized.memory_limit):
            continue
        found.append(
            _Target(
                name=sized.name,
                list_name=list_name,
                request=request,
                limit=limit,
                wanted_request=sized.memory_request,
                wanted_limit=sized.memory_limit,
                sized=sized,
            )
        )
    return found


def _bounded(
    target: _Target, *, spec: MemoryPolicySpec, working_set: int | None
) -> tuple[_Target, str | None]:
    """The target limited to one safe step; or why no step down is possible."""
    percent = spec.maxShrinkPercent
    limit = _step(target.limit, target.wanted_limit, percent)
    request = _step(target.request, target.wanted_request, percent)
    notes = []
    if limit is not None and working_set is not None and limit < working_set:
        if target.limit is not None and target.limit <= working_set:
            return target, (
                f"{target.name}: limit {_shown(target.wanted_limit)} is below its working set "
                f"{_shown(working_set)} (Prometheus); not lowered"
            )
        limit = working_set
        notes.append(f"{target.name}: not below its working set {_shown(working_set)}")
    if limit is not None and limit != target.wanted_limit and not notes:
        notes.append(
            f"{target.name}: one step of at most {percent}% down: limit {_shown(limit)} now, "
            f"{_shown(target.wanted_limit)} in later steps (maxShrinkPercent)"
        )
    guaranteed = target.wanted_request is not None and target.wanted_request == target.wanted_limit
    if guaranteed or (request is not None and limit is not None and request > limit):
        request = limit
    return replace(target, step_request=request, step_limit=limit, notes=tuple(notes)), None


def _resize_body(targets: Sequence[_Target]) -> dict[str, Any]:
    spec: dict[str, list[dict[str, Any]]] = {}
    for t in targets:
        resources: dict[str, Any] = {}
        if t.step_request is not None and t.step_request != t.request:
            resources["requests"] = {"memory": format_bytes(t.step_request)}
        if t.step_limit is not None and t.step_limit != t.limit:
            resources["limits"] = {"memory": format_bytes(t.step_limit)}
        if resources:
            spec.setdefault(t.list_name, []).append({"name": t.name, "resources": resources})
    return {"spec": spec}


def _stepped_qos(view: Mapping[str, Any], targets: Sequence[_Target]) -> str | None:
    """The pod's QoS class after the step (None: the pod cannot be read)."""
    try:
        shape = pod_shape(view)
    except PodShapeError:
        return None
    by_name = {t.name: t for t in targets}

    def apply(c: ContainerResources) -> ContainerResources:
        t = by_name.get(c.name)
        if t is None:
            return c
        return replace(c, memory_request=t.step_request, memory_limit=t.step_limit)

    return qos_class(
        replace(
            shape,
            containers=tuple(apply(c) for c in shape.containers),
            init_containers=tuple(apply(c) for c in shape.init_containers),
        )
    )


def _current_qos(view: Mapping[str, Any]) -> str | None:
    """The QoS class the API server gave the pod (fixed for its life), else computed."""
    recorded = (view.get("update") or {}).get("qos")
    if recorded:
        return str(recorded)
    try:
        return qos_class(pod_shape(view))
    except PodShapeError:
        return None


def _eviction_refusal(
    *,
    view: Mapping[str, Any],
    spec: MemoryPolicySpec,
    targets: Sequence[_Target],
    working_sets: Mapping[str, int] | None,
) -> str | None:
    """Why a pod must not be evicted to apply the policy, or None."""
    info = view.get("update") or {}
    owner = str(info.get("owner") or "")
    if not owner:
        return "no controller: an evicted pod would not come back (recreate it yourself)"
    why = not_recreated_why(owner.partition("/")[0])
    if why is not None:
        return f"owned by {owner}: {why}"
    for t in targets:
        if _step(t.limit, t.wanted_limit, spec.maxShrinkPercent) != t.wanted_limit:
            return (
                f"{t.name}: limit {_shown(t.limit)} -> {_shown(t.wanted_limit)} shrinks by "
                f"more than maxShrinkPercent {spec.maxShrinkPercent}%, and a recreated pod "
                "cannot step"
            )
        ws = (working_sets or {}).get(t.name)
        if ws is not None and t.wanted_limit is not None and t.wanted_limit < ws:
            return (
                f"{t.name}: limit {_shown(t.wanted_limit)} is below its working set "
                f"{_shown(ws)} (Prometheus)"
            )
    return None


def decide(*, view: Mapping[str, Any], plan: PodPlan, inputs: UpdateInputs) -> PodUpdate:
    """What the governing policy's update mode does to this running pod now, and why."""
    winner = plan.selection.winner
    if winner is None or plan.sizing is None:
        return PodUpdate()
    spec = winner.spec
    override = bool(spec.runtime and spec.runtime.go and spec.runtime.go.overrideExisting)
    stale = stale_runtime(view=view, plan=plan, override=override)
    mode = spec.update
    if mode == "Initial":
        return PodUpdate(stale_runtime=stale)
    if plan.infeasible:
        return PodUpdate(action="wait", reason=f"policy infeasible: {plan.infeasible}", stuck=True)

    targets = _targets(view=view, plan=plan)
    updated = not targets and spec.mode == "Enforce" and _resized_in_place(view, plan)

    def outcome(action: Action, reason: str, **kw: Any) -> PodUpdate:
        if action in ("resize", "evict") and not inputs.enabled:
            action, reason = "wait", f"updates are off (operator kill switch); would: {reason}"
            kw.pop("resize", None)
        return PodUpdate(action=action, reason=reason, stale_runtime=stale, updated=updated, **kw)

    info = view.get("update") or {}
    conditions = {c.get("type"): c for c in info.get("resize") or []}

    def evict(reason: str) -> PodUpdate:
        refusal = _eviction_refusal(
            view=view, spec=spec, targets=targets, working_sets=inputs.working_sets
        )
        if refusal is not None:
            return outcome("wait", f"{reason}; not evicted: {refusal}", stuck=True)
        return outcome("evict", reason)

    running = info.get("node") and info.get("phase") == "Running"

    # A resize the kubelet has not finished: its conditions say how it goes.
    pending = conditions.get(RESIZE_PENDING)
    if pending is not None and not targets:
        why = f"{pending.get('reason')}: {pending.get('message') or 'no message'}"
        if pending.get("reason") == "Infeasible":
            if mode == "InPlaceOrRecreate":
                return evict(f"resize infeasible on its node ({why})")
            return outcome("wait", f"resize infeasible on its node ({why})", stuck=True)
        waited = seconds_since(pending.get("since"), inputs.now)
        if mode == "InPlaceOrRecreate" and waited >= inputs.deferred_grace_seconds:
            # The grace, not the time waited: a reason that changed every second would
            # rewrite the policy's status every pass while the eviction waits its turn.
            grace = inputs.deferred_grace_seconds
            return evict(f"resize deferred for more than {grace:.0f}s ({why})")
        return outcome("wait", f"resize deferred by the kubelet ({why})")
    progress = conditions.get(RESIZE_IN_PROGRESS)
    if progress is not None and not targets:
        if progress.get("reason") == "Error":  # e.g. a memory limit below the usage
            why = f"the kubelet could not apply the resize ({progress.get('message') or 'Error'})"
            if mode == "InPlaceOrRecreate":
                return evict(why)
            return outcome("wait", why, stuck=True)
        return outcome("wait", "resize in progress on the node")

    stale_go = []
    for sized in plan.sizing.containers if mode == "InPlaceOrRecreate" else ():
        injected = _injected_gomemlimit(view, sized.name)
        ceiling = sized.cgroup.memory_high or sized.memory_limit
        if (
            injected is not None
            and ceiling is not None
            and injected > ceiling
            and (sized.gomemlimit_env is None or parse_go_bytes(sized.gomemlimit_env) != injected)
        ):
            stale_go.append(
                f"{sized.name}: its GOMEMLIMIT {_shown(injected)} would be above its new "
                f"{'memory.high' if sized.cgroup.memory_high else 'limit'} {_shown(ceiling)}"
            )
        stale_go += _injected_heaps(view, sized)

    if not targets:
        if mode == "Recreate" and stale:
            return evict("runtime env differs: " + "; ".join(stale))
        if mode == "InPlaceOrRecreate" and stale_go:
            return evict("; ".join(stale_go))
        return outcome("none", "")

    if not running:
        phase = info.get("phase") or "Pending"
        return outcome("wait", f"not running on a node yet (phase {phase}): updated once it runs")

    changes = tuple(
        f"{t.name}: {kind} {_shown(old)} -> {_shown(new)}"
        for t in targets
        for kind, old, new in (
            ("request", t.request, t.wanted_request),
            ("limit", t.limit, t.wanted_limit),
        )
        if old != new
    )
    summary = "; ".join(changes)
    if mode == "Recreate":
        return evict(summary)

    before, after = _current_qos(view), plan.sizing.qos_class
    in_place_refusal = None
    if before is not None and after != before:
        in_place_refusal = (
            f"the QoS class would change from {before} to {after}, which resize cannot do"
        )
    removed = [
        f"{kind} ({t.name})"
        for t in targets
        for kind, old, new in (
            ("request", t.request, t.wanted_request),
            ("limit", t.limit, t.wanted_limit),
        )
        if old is not None and new is None
    ]
    if in_place_refusal is None and removed:
        in_place_refusal = f"resize cannot remove a memory {' or '.join(removed)}"
    if in_place_refusal is None and stale_go and mode == "InPlaceOrRecreate":
        return evict(f"{summary}; " + "; ".join(stale_go))
    if in_place_refusal is None and inputs.refused is not None:
        in_place_refusal = f"the API server refused the resize: {inputs.refused}"

    if in_place_refusal is not None:
        if mode == "InPlaceOrRecreate":
            return evict(f"{summary}; {in_place_refusal}")
        return outcome("wait", f"{summary}; not resized: {in_place_refusal}", stuck=True)

    stepped = []
    for t in targets:
        lowers = t.wanted_limit is not None and t.limit is not None and t.wanted_limit < t.limit
        if inputs.working_sets is not None and t.name not in inputs.working_sets and lowers:
            # Prometheus is configured but said nothing of this container (no sample yet,
            # or the query failed): the rail it stands for cannot be checked, so no step down.
            return outcome(
                "wait",
                f"{summary}; not lowered: the working set of {t.name} is not known yet "
                "(no answer from Prometheus)",
            )
        ws = None if inputs.working_sets is None else inputs.working_sets.get(t.name)
        bounded, blocked = _bounded(t, spec=spec, working_set=ws)
        if blocked is not None:
            return outcome("wait", blocked, stuck=True)
        stepped.append(bounded)
    step_qos = _stepped_qos(view, stepped)
    if before is not None and step_qos is not None and step_qos != before:
        return outcome(
            "wait",
            f"{summary}; one bounded step would make the pod {step_qos} (maxShrinkPercent)",
            stuck=True,
        )
    body = _resize_body(stepped)
    if not body["spec"]:
        return outcome("wait", f"{summary}; no step possible", stuck=True)
    restarts = tuple(
        t.name
        for t in stepped
        if _restart_policy(_containers(view)[t.name][1]) == "RestartContainer"
    )
    notes = [n for t in stepped for n in t.notes]
    reason = summary
    if restarts:
        reason += f"; restarts {', '.join(restarts)} (resizePolicy RestartContainer)"
    if notes:
        reason += "; " + "; ".join(notes)
    if inputs.working_sets is None and any(
        t.wanted_limit is not None and t.limit is not None and t.wanted_limit < t.limit
        for t in targets
    ):
        reason += "; working set unknown (no Prometheus): only the percentage bound holds"
    if stale:
        reason += (
            "; runtime env (GOMEMLIMIT/GOGC, JVM/Node.js flags) stays as it is until the pod"
            " is recreated"
        )
    return outcome("resize", reason, resize=body, changes=changes, restarts=restarts)


def _resized_in_place(view: Mapping[str, Any], plan: PodPlan) -> bool:
    """The pod has the policy's memory, but admission did not give it (no record, or a
    record of other values): memwarden resized it after it started."""
    assert plan.selection.winner is not None and plan.sizing is not None
    if plan.selection.winner.spec.memory is None:
        return False
    record = _applied(view).get("containers") or {}
    for sized in plan.sizing.containers:
        admitted = record.get(sized.name) or {}
        given = (
            None if "request" not in admitted else _record_bytes(admitted["request"]),
            None if "limit" not in admitted else _record_bytes(admitted["limit"]),
        )
        if given != (sized.memory_request, sized.memory_limit):
            return True
    return False


def _record_bytes(text: object) -> int | None:
    """A quantity from the applied record, None when unreadable."""
    return _bytes(str(text))


@dataclass
class _Retry:
    failures: int
    next_at: float
    message: str
    refused: bool


class RetryBook:
    """Backoff per pod after a failed resize or a held-back eviction, and the API server's
    last refusal (which the planner reads: ``UpdateInputs.refused``). Pure: ``now``
    (monotonic seconds) is passed in.

    In memory only, on purpose: what was done is in the pods themselves (their resources,
    conditions, or their absence after an eviction), so a restarted operator neither
    repeats nor forgets work; it only tries a refused resize once more."""

    def __init__(self, *, base: float, cap: float) -> None:
        self.base, self.cap = base, cap
        self._entries: dict[tuple[str, str], _Retry] = {}

    def due(self, key: tuple[str, str], now: float) -> bool:
        entry = self._entries.get(key)
        return entry is None or now >= entry.next_at

    def failed(
        self,
        key: tuple[str, str],
        *,
        now: float,
        message: str,
        refused: bool = False,
        after: float | None = None,
    ) -> float:
        """Record a failure; returns the delay before the next attempt (doubling, capped,
        or ``after`` when the API server said how long to wait)."""
        before = self._entries.get(key)
        failures = before.failures + 1 if before else 1
        delay = after if after is not None else min(self.cap, self.base * 2 ** (failures - 1))
        self._entries[key] = _Retry(failures, now + delay, message, refused)
        return delay

    def succeeded(self, key: tuple[str, str]) -> None:
        self._entries.pop(key, None)

    def refused(self, key: tuple[str, str], now: float) -> str | None:
        """The last refusal, while its backoff lasts (then the resize is tried again)."""
        entry = self._entries.get(key)
        if entry is None or not entry.refused or now >= entry.next_at:
            return None
        return entry.message

    def forget_gone(self, namespace: str, present: set[str]) -> None:
        """Forget the pods of ``namespace`` that are no longer there."""
        for key in [k for k in self._entries if k[0] == namespace and k[1] not in present]:
            del self._entries[key]


__all__ = [
    "RESIZE_IN_PROGRESS",
    "RESIZE_PENDING",
    "PodUpdate",
    "RetryBook",
    "UpdateInputs",
    "decide",
    "parse_go_bytes",
    "stale_runtime",
]
