"""Builders for test objects: pods and policies as the API server would hold them."""

from __future__ import annotations

from typing import Any

from memwarden.api import MemoryPolicySpec
from memwarden.selection import Candidate


def make_container(
    name: str = "app",
    *,
    memory_request: str | None = None,
    memory_limit: str | None = None,
    cpu_request: str | None = None,
    cpu_limit: str | None = None,
    env: dict[str, str] | None = None,
    env_from_field: tuple[str, ...] = (),
    image: str = "example.com/app:1",
) -> dict[str, Any]:
    """A container dict; ``env_from_field`` names variables set with ``valueFrom``."""
    container: dict[str, Any] = {"name": name, "image": image}
    requests = {k: v for k, v in (("memory", memory_request), ("cpu", cpu_request)) if v}
    limits = {k: v for k, v in (("memory", memory_limit), ("cpu", cpu_limit)) if v}
    if requests or limits:
        container["resources"] = {
            **({"requests": requests} if requests else {}),
            **({"limits": limits} if limits else {}),
        }
    entries: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in (env or {}).items()]
    entries += [
        {"name": k, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
        for k in env_from_field
    ]
    if entries:
        container["env"] = entries
    return container


def make_pod(
    name: str = "pod-1",
    *,
    namespace: str = "shop",
    labels: dict[str, str] | None = None,
    containers: list[dict[str, Any]] | None = None,
    init_containers: list[dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A pod dict; by default one container ``app`` with no resources."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels or {}}
    if annotations:
        metadata["annotations"] = annotations
    spec: dict[str, Any] = {"containers": containers or [make_container()]}
    if init_containers:
        spec["initContainers"] = init_containers
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def make_policy_spec(
    *,
    match_labels: dict[str, str] | None = None,
    memory: dict[str, str] | None = None,
    go: dict[str, Any] | None = None,
    jvm: dict[str, Any] | None = None,
    node: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A MemoryPolicy spec dict (as a user writes it); go/jvm/node: runtime sections."""
    spec: dict[str, Any] = {"selector": {"matchLabels": match_labels or {"app": "checkout"}}}
    if memory is not None:
        spec["memory"] = memory
    runtime = {k: v for k, v in (("go", go), ("jvm", jvm), ("node", node)) if v is not None}
    if runtime:
        spec["runtime"] = runtime
    spec.update(fields)
    return spec


def make_policy(
    name: str = "checkout",
    *,
    namespace: str = "shop",
    spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A whole MemoryPolicy object, ready for kubectl apply."""
    return {
        "apiVersion": "memwarden.dev/v1alpha1",
        "kind": "MemoryPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec or make_policy_spec(memory={"request": "512Mi", "limit": "1Gi"}),
    }


def make_candidate(
    name: str = "checkout",
    *,
    namespace: str = "shop",
    created: str = "2026-11-25T10:00:00Z",
    **spec_fields: Any,
) -> Candidate:
    """A policy as selection sees it."""
    spec = MemoryPolicySpec.model_validate(make_policy_spec(**spec_fields))
    return Candidate(namespace=namespace, name=name, created=created, spec=spec)


def make_admission_review(pod: dict[str, Any], *, uid: str = "review-1") -> dict[str, Any]:
    """A complete AdmissionReview of a pod CREATE, as the API server sends one."""
    gvk = {"group": "", "version": "v1", "kind": "Pod"}
    gvr = {"group": "", "version": "v1", "resource": "pods"}
    metadata = pod.get("metadata") or {}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "name": metadata.get("name", ""),
            "namespace": metadata.get("namespace"),
            "operation": "CREATE",
            "userInfo": {"username": "fuzz", "groups": ["system:authenticated"]},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }
