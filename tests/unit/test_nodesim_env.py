"""nodesim.env: a container's environment as the kubelet resolves it (pure).

The node simulator is test infrastructure (hack/nodesim); these cases pin the kubelet
behaviours the rest of the suite relies on, above all that ``GOMEMLIMIT`` and friends
reach the process exactly as written or referenced.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from nodesim.env import (
    EnvError,
    PodContext,
    Sources,
    config_map_data,
    expand,
    expand_all,
    referenced_objects,
    resolve_env,
    runtime_env,
    secret_data,
)

from memwarden_testing.builders import make_container, make_pod

pytestmark = pytest.mark.unit

MI = 2**20
GI = 2**30


def context(pod: dict[str, Any] | None = None) -> PodContext:
    pod = pod or make_pod(
        "checkout-7f9c",
        namespace="shop",
        labels={"app": "checkout", "tier": "web"},
        annotations={"memwarden.dev/policy": "checkout"},
        containers=[make_container("app", memory_request="256Mi", memory_limit="512Mi")],
    )
    pod.setdefault("metadata", {})["uid"] = "0b7e4c3a-uid"
    pod["spec"].update(nodeName="memwarden-sim-0", serviceAccountName="default")
    return PodContext(
        pod=pod,
        pod_ip="127.100.0.7",
        host_ip="127.0.0.1",
        node_allocatable_memory=8 * GI,
        node_allocatable_millicores=4000,
        node_allocatable_ephemeral_storage=50 * GI,
    )


SOURCES = Sources(
    config_maps={"settings": {"mode": "strict", "level": "3"}},
    secrets={"token": {"value": "s3cret"}},
)


def value_from(name: str, source: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "valueFrom": source}


def field_ref(path: str) -> dict[str, Any]:
    return {"fieldRef": {"fieldPath": path}}


def resource_ref(resource: str, divisor: str | None = None, **extra: str) -> dict[str, Any]:
    ref: dict[str, Any] = {"resource": resource, **extra}
    if divisor:
        ref["divisor"] = divisor
    return {"resourceFieldRef": ref}


# --- $(VAR) expansion ------------------------------------------------------------------

EXPANSIONS = [
    pytest.param("$(A)", "alpha", id="defined"),
    pytest.param("x-$(A)-$(B)", "x-alpha-beta", id="two-in-text"),
    pytest.param("$(MISSING)", "$(MISSING)", id="undefined-kept"),
    pytest.param("$$(A)", "$(A)", id="escaped-reference"),
    pytest.param("$$", "$", id="escaped-dollar"),
    pytest.param("cost: $5", "cost: $5", id="lone-dollar-kept"),
    pytest.param("$(A", "$(A", id="unclosed-reference"),
    pytest.param("end$", "end$", id="trailing-dollar"),
    pytest.param("$()", "$()", id="empty-name-undefined"),
]


@pytest.mark.parametrize(("text", "expected"), EXPANSIONS)
def test_expand(text: str, expected: str) -> None:
    assert expand(text, {"A": "alpha", "B": "beta"}) == expected


# --- env -------------------------------------------------------------------------------

RESOLUTIONS = [
    pytest.param(
        [{"name": "GOMEMLIMIT", "value": "460MiB"}, {"name": "GOGC", "value": "100"}],
        {"GOMEMLIMIT": "460MiB", "GOGC": "100"},
        id="plain-values",
    ),
    pytest.param(
        [{"name": "BASE", "value": "460"}, {"name": "GOMEMLIMIT", "value": "$(BASE)MiB"}],
        {"BASE": "460", "GOMEMLIMIT": "460MiB"},
        id="reference-to-earlier",
    ),
    pytest.param(
        [{"name": "GOMEMLIMIT", "value": "$(LATER)"}, {"name": "LATER", "value": "1"}],
        {"GOMEMLIMIT": "$(LATER)", "LATER": "1"},
        id="reference-to-later-kept",
    ),
    pytest.param(
        [
            value_from("NAME", field_ref("metadata.name")),
            value_from("NS", field_ref("metadata.namespace")),
            value_from("UID", field_ref("metadata.uid")),
            value_from("NODE", field_ref("spec.nodeName")),
            value_from("SA", field_ref("spec.serviceAccountName")),
            value_from("POD_IP", field_ref("status.podIP")),
            value_from("POD_IPS", field_ref("status.podIPs")),
            value_from("HOST_IP", field_ref("status.hostIP")),
        ],
        {
            "NAME": "checkout-7f9c",
            "NS": "shop",
            "UID": "0b7e4c3a-uid",
            "NODE": "memwarden-sim-0",
            "SA": "default",
            "POD_IP": "127.100.0.7",
            "POD_IPS": "127.100.0.7",
            "HOST_IP": "127.0.0.1",
        },
        id="field-refs",
    ),
    pytest.param(
        [
            value_from("APP", field_ref("metadata.labels['app']")),
            value_from("POLICY", field_ref("metadata.annotations['memwarden.dev/policy']")),
            value_from("NONE", field_ref("metadata.labels['absent']")),
        ],
        {"APP": "checkout", "POLICY": "checkout", "NONE": ""},
        id="label-and-annotation-subscripts",
    ),
    pytest.param(
        [
            value_from("LIMIT", resource_ref("limits.memory")),
            value_from("LIMIT_MI", resource_ref("limits.memory", "1Mi")),
            value_from("REQUEST_MI", resource_ref("requests.memory", "1Mi")),
            value_from("LIMIT_G", resource_ref("limits.memory", "1G")),
        ],
        {
            "LIMIT": str(512 * MI),
            "LIMIT_MI": "512",
            "REQUEST_MI": "256",
            "LIMIT_G": "1",  # 536870912 / 1e9 rounded up
        },
        id="memory-resource-refs-round-up",
    ),
    pytest.param(
        [
            value_from("CPU_LIMIT", resource_ref("limits.cpu")),
            value_from("CPU_LIMIT_M", resource_ref("limits.cpu", "1m")),
            value_from("CPU_REQUEST", resource_ref("requests.cpu")),
            value_from("STORAGE", resource_ref("limits.ephemeral-storage", "1Gi")),
        ],
        {"CPU_LIMIT": "4", "CPU_LIMIT_M": "4000", "CPU_REQUEST": "0", "STORAGE": "50"},
        id="unset-limits-read-node-allocatable",
    ),
    pytest.param(
        [value_from("OTHER", resource_ref("limits.memory", "1Mi", containerName="sidecar"))],
        {"OTHER": "64"},
        id="resource-ref-of-another-container",
    ),
    pytest.param(
        [
            value_from("MODE", {"configMapKeyRef": {"name": "settings", "key": "mode"}}),
            value_from("TOKEN", {"secretKeyRef": {"name": "token", "key": "value"}}),
        ],
        {"MODE": "strict", "TOKEN": "s3cret"},
        id="config-map-and-secret-keys",
    ),
    pytest.param(
        [
            value_from("A", {"configMapKeyRef": {"name": "absent", "key": "k", "optional": True}}),
            value_from(
                "B", {"configMapKeyRef": {"name": "settings", "key": "nope", "optional": True}}
            ),
            value_from("C", {"secretKeyRef": {"name": "absent", "key": "k", "optional": True}}),
        ],
        {},
        id="optional-missing-skipped",
    ),
]


@pytest.mark.parametrize(("env", "expected"), RESOLUTIONS)
def test_resolve_env(env: list[dict[str, Any]], expected: dict[str, str]) -> None:
    ctx = context()
    sidecar = make_container("sidecar", memory_limit="64Mi")
    ctx.pod["spec"]["containers"].append(sidecar)
    container = {**ctx.pod["spec"]["containers"][0], "env": env}
    assert resolve_env(container, ctx=ctx, sources=SOURCES) == expected


def test_env_from_with_prefix_and_env_precedence() -> None:
    container = {
        "name": "app",
        "envFrom": [
            {"configMapRef": {"name": "settings"}, "prefix": "CFG_"},
            {"secretRef": {"name": "token"}},
            {"configMapRef": {"name": "absent", "optional": True}},
        ],
        "env": [{"name": "CFG_mode", "value": "lenient"}, {"name": "X", "value": "$(value)"}],
    }
    env = resolve_env(container, ctx=context(), sources=SOURCES)
    assert env == {"CFG_mode": "lenient", "CFG_level": "3", "value": "s3cret", "X": "s3cret"}


ERRORS = [
    pytest.param(
        {"env": [value_from("A", {"configMapKeyRef": {"name": "absent", "key": "k"}})]},
        'configmap "absent" not found',
        id="missing-config-map",
    ),
    pytest.param(
        {"env": [value_from("A", {"secretKeyRef": {"name": "token", "key": "nope"}})]},
        "couldn't find key nope in Secret shop/token",
        id="missing-secret-key",
    ),
    pytest.param(
        {"envFrom": [{"secretRef": {"name": "absent"}}]},
        'secret "absent" not found',
        id="missing-env-from-secret",
    ),
    pytest.param(
        {"env": [value_from("A", field_ref("status.phase"))]},
        "unsupported fieldRef.fieldPath 'status.phase'",
        id="unsupported-field",
    ),
    pytest.param(
        {"env": [value_from("A", resource_ref("limits.hugepages-2Mi"))]},
        "unsupported resourceFieldRef.resource 'limits.hugepages-2Mi'",
        id="unsupported-resource",
    ),
    pytest.param(
        {"env": [value_from("A", resource_ref("limits.memory", containerName="ghost"))]},
        "no container named 'ghost'",
        id="resource-ref-unknown-container",
    ),
]


@pytest.mark.parametrize(("extra", "message"), ERRORS)
def test_resolve_env_errors(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(EnvError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_env({"name": "app", **extra}, ctx=context(), sources=SOURCES)


def test_referenced_objects() -> None:
    container = {
        "envFrom": [{"configMapRef": {"name": "a"}}, {"secretRef": {"name": "b"}}],
        "env": [
            value_from("X", {"configMapKeyRef": {"name": "c", "key": "k"}}),
            value_from("Y", {"secretKeyRef": {"name": "b", "key": "k"}}),
            {"name": "Z", "value": "plain"},
        ],
    }
    assert referenced_objects(container) == (frozenset({"a", "c"}), frozenset({"b"}))


def test_object_data_decoding() -> None:
    encoded = base64.b64encode(b"s3cret").decode()
    assert secret_data({"data": {"value": encoded}}) == {"value": "s3cret"}
    config_map = {"data": {"a": "1"}, "binaryData": {"b": base64.b64encode(b"two").decode()}}
    assert config_map_data(config_map) == {"a": "1", "b": "two"}


def test_runtime_env_precedence() -> None:
    env = runtime_env(
        base={"PATH": "/bin", "HOME": "/root"},
        own={"PATH": "/opt/bin", "LEAKY_LISTEN": "0.0.0.0:9000", "GOMEMLIMIT": "1GiB"},
        defaults={"HOSTNAME": "pod", "LEAKY_LISTEN": "127.100.0.7:6060"},
        forced={"MEMWARDEN_TERMINATION_LOG": "/state/t.log"},
    )
    # The pod's own values beat the runtime's defaults; the simulator's stand-ins win.
    assert env == {
        "PATH": "/opt/bin",
        "HOME": "/root",
        "HOSTNAME": "pod",
        "LEAKY_LISTEN": "0.0.0.0:9000",
        "GOMEMLIMIT": "1GiB",
        "MEMWARDEN_TERMINATION_LOG": "/state/t.log",
    }


def test_expand_all_uses_the_container_env() -> None:
    args = expand_all(["--limit=$(GOMEMLIMIT)", "$(UNSET)"], {"GOMEMLIMIT": "1GiB"})
    assert args == ["--limit=1GiB", "$(UNSET)"]
