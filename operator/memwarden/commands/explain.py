"""``memwarden explain``: offline, from files, what a policy does to a pod and why.

GitOps pipelines run it before merging: it needs no cluster. It prints the governing
policy, the resources and Go env admission would set, and the cgroup files the kubelet
would write under the given kubelet profile, or why the policy cannot be applied.

Exit codes: 0 explained (also when no policy selects the pod), 1 the governing policy
is infeasible for this pod, 2 bad input (the message names the file and field).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from memwarden.api import MemoryPolicy
from memwarden.kubeletconfig import (
    KubeletConfigError,
    kubelet_rejects,
    parse_feature_gates,
    parse_kubelet_config,
)
from memwarden.mutation import PodPlan, PodShapeError, injected_options, plan_pod
from memwarden.output import add_output_argument, render
from memwarden.quantity import QuantityError, format_bytes, parse_bytes, readable_bytes
from memwarden.selection import Candidate, select_for_pod
from memwarden.settings import KubeletSettings
from memwarden.sizing import CgroupValues

WORKLOAD_TEMPLATES = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


class InputError(ValueError):
    """Unreadable or invalid input; the message names the file and the field."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        action="append",
        required=True,
        type=Path,
        help="MemoryPolicy YAML file (repeatable; a file may hold several)",
    )
    parser.add_argument(
        "--pod",
        required=True,
        type=Path,
        help="a Pod, or a workload (Deployment, StatefulSet, Job, ...) YAML",
    )
    parser.add_argument("--namespace", help="namespace of the pod when its file does not say")
    add_kubelet_profile_arguments(parser)
    add_output_argument(parser)


def add_kubelet_profile_arguments(parser: argparse.ArgumentParser) -> None:
    """The kubelet's MemoryQoS settings, the same on every command that sizes (explain,
    recommend): ``load_profile`` reads them."""
    parser.add_argument(
        "--profile",
        type=Path,
        help="YAML file of memwarden's kubelet settings: the chart's kubelet: values"
        " (kubernetesMinor, memoryQoS, memoryThrottlingFactor, ...), or a values file",
    )
    parser.add_argument(
        "--kubelet-config",
        type=Path,
        help="the kubelet's KubeletConfiguration (/var/lib/kubelet/config.yaml) or kubeadm's"
        " kubelet-config ConfigMap: its MemoryQoS gate, memoryThrottlingFactor and"
        " memoryReservationPolicy",
    )
    parser.add_argument(
        "--feature-gates",
        help="as the kubelet flag (MemoryQoS=true); wins over --kubelet-config",
    )
    parser.add_argument("--kubernetes-minor", type=int, help="kubelet minor version (default 37)")
    parser.add_argument("--throttling-factor", help="memoryThrottlingFactor, or 'unset'")
    parser.add_argument("--reservation-policy", choices=["None", "TieredReservation"])
    parser.add_argument("--page-size", type=int)
    parser.add_argument("--node-allocatable", help="node allocatable memory, e.g. 16Gi")


def _documents(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from exc
    try:
        for index, doc in enumerate(yaml.safe_load_all(text)):
            if doc is None:
                continue
            if not isinstance(doc, dict):
                raise InputError(f"{path}#{index + 1}: not a Kubernetes object")
            yield index + 1, doc
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not YAML: {exc}") from exc


def _validation_message(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"] if part not in {"function-after"})
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"


def load_policies(paths: list[Path]) -> list[tuple[MemoryPolicy, str]]:
    """Every MemoryPolicy in the files, validated like the CRD does; (policy, origin)."""
    policies: list[tuple[MemoryPolicy, str]] = []
    for path in paths:
        for index, doc in _documents(path):
            if doc.get("kind") != "MemoryPolicy":
                continue
            origin = f"{path}#{index}"
            try:
                policies.append((MemoryPolicy.model_validate(doc), origin))
            except ValidationError as exc:
                raise InputError(f"{origin}: {_validation_message(exc)}") from exc
    if not policies:
        raise InputError("no MemoryPolicy in " + ", ".join(str(p) for p in paths))
    return policies


def load_pod(path: Path) -> dict[str, Any]:
    """The pod of the file: a Pod as is, or a workload's pod template."""
    for index, doc in _documents(path):
        kind = doc.get("kind")
        if kind == "Pod":
            return doc
        if kind in WORKLOAD_TEMPLATES:
            template: Any = doc
            for key in WORKLOAD_TEMPLATES[kind]:
                template = template.get(key) if isinstance(template, Mapping) else None
            if not isinstance(template, Mapping):
                raise InputError(f"{path}#{index}: {kind} has no pod template")
            metadata = dict(template.get("metadata") or {})
            metadata.setdefault("namespace", (doc.get("metadata") or {}).get("namespace"))
            metadata.setdefault("name", f"{(doc.get('metadata') or {}).get('name', 'pod')}-*")
            return {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": metadata,
                "spec": dict(template.get("spec") or {}),
            }
    raise InputError(f"{path}: no Pod or workload with a pod template")


def _profile_file(path: Path) -> dict[str, Any]:
    """The kubelet settings of a --profile file, camelCase (snake_case keys are an alias)."""
    docs = list(_documents(path))
    if not docs:
        return {}
    values = docs[0][1]
    if isinstance(values.get("kubelet"), Mapping):
        values = dict(values["kubelet"])  # a chart values file
    aliases = {name: field.alias or name for name, field in KubeletSettings.model_fields.items()}
    return {aliases.get(key, key): value for key, value in values.items()}


def _kubelet_config(args: argparse.Namespace) -> dict[str, object]:
    """--kubelet-config, then --feature-gates over it, as the kubelet merges them."""
    values: dict[str, object] = {}
    try:
        if args.kubelet_config is not None:
            try:
                text = args.kubelet_config.read_text()
            except OSError as exc:
                raise InputError(f"{args.kubelet_config}: {exc.strerror}") from exc
            values.update(parse_kubelet_config(text, source=str(args.kubelet_config)).settings())
        if args.feature_gates is not None:
            gates = parse_feature_gates(args.feature_gates)
            if "MemoryQoS" in gates:
                values["memoryQoS"] = gates["MemoryQoS"]
    except KubeletConfigError as exc:
        raise InputError(str(exc)) from exc
    return values


def load_profile(args: argparse.Namespace) -> KubeletSettings:
    """defaults < --profile < --kubelet-config < --feature-gates < the single-value flags."""
    values: dict[str, Any] = {}
    if args.profile is not None:
        values.update(_profile_file(args.profile))
    values.update(_kubelet_config(args))
    flags = {
        "kubernetesMinor": args.kubernetes_minor,
        "memoryReservationPolicy": args.reservation_policy,
        "pageSize": args.page_size,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    if args.throttling_factor is not None:
        unset = args.throttling_factor.lower() in {"unset", "none", ""}
        try:
            values["memoryThrottlingFactor"] = None if unset else float(args.throttling_factor)
        except ValueError as exc:
            raise InputError(
                "--throttling-factor: a number in (0, 1] or 'unset',"
                f" got {args.throttling_factor!r}"
            ) from exc
    try:
        if args.node_allocatable is not None:
            values["nodeAllocatable"] = parse_bytes(args.node_allocatable)
        elif isinstance(values.get("nodeAllocatable"), str):
            values["nodeAllocatable"] = parse_bytes(values["nodeAllocatable"])
        settings = KubeletSettings.model_validate(values)
    except (ValidationError, QuantityError) as exc:
        message = _validation_message(exc) if isinstance(exc, ValidationError) else str(exc)
        raise InputError(f"kubelet profile: {message}") from exc
    rejected = kubelet_rejects(settings.profile())
    if rejected is not None:
        raise InputError(f"kubelet profile: {rejected}")
    return settings


def _cgroup(values: CgroupValues) -> dict[str, str | None]:
    def show(n: int | None) -> str | None:
        return None if n is None else format_bytes(n)

    return {
        "memory.min": show(values.memory_min),
        "memory.low": show(values.memory_low),
        "memory.high": show(values.memory_high),
        "memory.max": show(values.memory_max) if values.memory_max is not None else "max",
    }


def _effective_profile(settings: KubeletSettings) -> dict[str, Any]:
    """The kubelet settings explain used, the version's defaults filled in (camelCase)."""
    profile = settings.profile()
    return {
        **settings.model_dump(),
        "memoryQoS": profile.memory_qos,
        "memoryThrottlingFactor": profile.throttling_factor,
    }


def explanation(plan: PodPlan, *, profile: KubeletSettings) -> dict[str, Any]:
    """The plan as a plain document (the JSON output)."""
    selection = plan.selection
    doc: dict[str, Any] = {
        "profile": _effective_profile(profile),
        "policy": selection.winner.key if selection.winner else None,
        "reason": selection.reason,
        "otherMatchingPolicies": [c.key for c in selection.others],
    }
    sizing = plan.sizing
    if sizing is None:
        return doc
    doc["qosClass"] = sizing.qos_class
    doc["infeasible"] = sizing.infeasible
    doc["podCgroup"] = _cgroup(sizing.pod_cgroup)
    doc["containers"] = [
        {
            "name": c.name,
            "request": format_bytes(c.memory_request) if c.memory_request is not None else None,
            "limit": format_bytes(c.memory_limit) if c.memory_limit is not None else None,
            "env": {k: v for k, v in (("GOMEMLIMIT", c.gomemlimit_env), ("GOGC", c.gogc)) if v},
            # The flags memwarden merges in; the container's own flags stay beside them.
            "options": injected_options(c),
            "runtimeLimits": {
                k: v
                for k, v in (
                    ("jvmMaxHeapBytes", c.jvm_max_heap),
                    ("nodeMaxOldSpaceBytes", c.node_max_old_space),
                )
                if v is not None
            },
            "cgroup": _cgroup(c.cgroup),
        }
        for c in sizing.containers
    ]
    doc["changes"] = list(plan.drift)
    doc["notes"] = list(plan.notes)
    return doc


def _readable(quantity: str | None) -> str:
    """A table cell, for people (the JSON keeps the exact quantity)."""
    if quantity is None:
        return "-"
    return quantity if quantity == "max" else readable_bytes(parse_bytes(quantity))


def render_table(doc: Mapping[str, Any]) -> str:
    lines = [f"policy:  {doc['policy'] or '(none)'}  -- {doc['reason']}"]
    if doc["otherMatchingPolicies"]:
        lines.append(f"also matching: {', '.join(doc['otherMatchingPolicies'])}")
    if "qosClass" not in doc:
        return "\n".join(lines) + "\n"
    lines.append(f"QoS:     {doc['qosClass']}")
    if doc["infeasible"]:
        lines.append(f"INFEASIBLE: {doc['infeasible']}")
    header = (
        "container",
        "request",
        "limit",
        "memory.min",
        "memory.low",
        "memory.high",
        "memory.max",
        "GOMEMLIMIT",
        "GOGC",
    )
    rows = [header]
    for c in doc.get("containers", []):
        cg = c["cgroup"]
        rows.append(
            (
                c["name"],
                _readable(c["request"]),
                _readable(c["limit"]),
                _readable(cg["memory.min"]),
                _readable(cg["memory.low"]),
                _readable(cg["memory.high"]),
                _readable(cg["memory.max"]),
                c["env"].get("GOMEMLIMIT", "-"),
                c["env"].get("GOGC", "-"),
            )
        )
    pod = doc["podCgroup"]
    rows.append(
        (
            "(pod)",
            "",
            "",
            _readable(pod["memory.min"]),
            _readable(pod["memory.low"]),
            _readable(pod["memory.high"]),
            _readable(pod["memory.max"]),
            "",
            "",
        )
    )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines += [
        "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines += [
        f"inject:  {c['name']}: {var} += {flags}"
        for c in doc.get("containers", [])
        for var, flags in c.get("options", {}).items()
    ]
    lines += [f"change:  {c}" for c in doc.get("changes", [])]
    lines += [f"note:    {n}" for n in doc.get("notes", [])]
    return "\n".join(lines) + "\n"


def explain(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    policies = load_policies(args.policy)
    pod = load_pod(args.pod)
    profile = load_profile(args)
    metadata = pod.get("metadata") or {}
    namespace = metadata.get("namespace") or args.namespace
    candidates = [
        Candidate(
            namespace=policy.metadata.get("namespace") or namespace or "default",
            name=str(policy.metadata.get("name") or origin),
            created=str(policy.metadata.get("creationTimestamp") or ""),
            spec=policy.spec,
        )
        for policy, origin in policies
    ]
    if namespace:
        candidates = [c for c in candidates if c.namespace == namespace]
    selection = select_for_pod(pod, candidates)
    try:
        plan = plan_pod(pod=pod, selection=selection, profile=profile.profile())
    except PodShapeError as exc:
        raise InputError(f"{args.pod}: {exc}") from exc
    doc = explanation(plan, profile=profile)
    return doc, 1 if plan.infeasible else 0


def run(args: argparse.Namespace) -> int:
    try:
        doc, code = explain(args)
    except InputError as exc:
        print(f"memwarden explain: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(render(doc, output=args.output, table=lambda _wide: render_table(doc)))
    return code
