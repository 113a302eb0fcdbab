"""A container's environment, resolved as the kubelet resolves it. Pure: no I/O.

Test infrastructure. Covers ``envFrom`` (ConfigMap/Secret, with ``prefix``) and ``env``
with plain values, ``$(VAR)`` expansion, ``fieldRef``, ``resourceFieldRef``,
``configMapKeyRef`` and ``secretKeyRef`` (with ``optional``). The caller fetches the
ConfigMaps and Secrets that ``referenced_objects`` names and passes their decoded data in
``Sources``; a missing object is simply absent from it. ``runtime_env`` then adds what the
simulator itself provides (base PATH, HOSTNAME, listen address, MEMWARDEN_* variables).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from memwarden.quantity import QuantityError, parse_bytes, parse_millicores

__all__ = [
    "EnvError",
    "PodContext",
    "Sources",
    "config_map_data",
    "expand",
    "expand_all",
    "field_value",
    "referenced_objects",
    "resolve_env",
    "resource_value",
    "runtime_env",
    "secret_data",
]


class EnvError(ValueError):
    """The kubelet's CreateContainerConfigError: a required source is missing or wrong."""


@dataclass(frozen=True)
class PodContext:
    """What the downward API can see of the pod and its node."""

    pod: Mapping[str, Any]
    pod_ip: str
    host_ip: str
    node_allocatable_memory: int
    node_allocatable_millicores: int
    node_allocatable_ephemeral_storage: int = 0


@dataclass(frozen=True)
class Sources:
    """Decoded data of the ConfigMaps and Secrets of the pod's namespace, by name."""

    config_maps: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    secrets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


def referenced_objects(container: Mapping[str, Any]) -> tuple[frozenset[str], frozenset[str]]:
    """(ConfigMap names, Secret names) the container's ``env``/``envFrom`` read."""
    config_maps: set[str] = set()
    secrets: set[str] = set()
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            config_maps.add(source["configMapRef"].get("name", ""))
        if "secretRef" in source:
            secrets.add(source["secretRef"].get("name", ""))
    for var in container.get("env") or []:
        value_from = var.get("valueFrom") or {}
        if "configMapKeyRef" in value_from:
            config_maps.add(value_from["configMapKeyRef"].get("name", ""))
        if "secretKeyRef" in value_from:
            secrets.add(value_from["secretKeyRef"].get("name", ""))
    return frozenset(config_maps), frozenset(secrets)


def secret_data(secret: Mapping[str, Any]) -> dict[str, str]:
    """A Secret's ``data`` (base64 in the API) as text."""
    return {key: _b64(value) for key, value in (secret.get("data") or {}).items()}


def config_map_data(config_map: Mapping[str, Any]) -> dict[str, str]:
    """A ConfigMap's ``data`` and (decoded) ``binaryData``."""
    data = {key: str(value) for key, value in (config_map.get("data") or {}).items()}
    for key, value in (config_map.get("binaryData") or {}).items():
        data[key] = _b64(value)
    return data


def _b64(value: str) -> str:
    try:
        return base64.b64decode(value).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return ""


# --- $(VAR) expansion ------------------------------------------------------------------


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion (third_party/forked/golang/expansion).

    ``$(NAME)`` becomes the value of NAME when defined, else stays as written; ``$$``
    is an escaped ``$``; any other ``$`` is kept.
    """
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            rest = text[cursor + 1 :]
            if rest[0] == "$":
                out.append("$")
                advance = 1
            elif rest[0] == "(":
                close = rest.find(")", 1)
                if close == -1:
                    out.append("$(")
                    advance = 1
                else:
                    name = rest[1:close]
                    out.append(env.get(name, f"$({name})"))
                    advance = close + 1
            else:
                out.append("$" + rest[0])
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


# --- downward API ----------------------------------------------------------------------

_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_value(path: str, ctx: PodContext) -> str:
    """The value of a ``fieldRef.fieldPath`` supported in env."""
    pod = ctx.pod
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    match = _SUBSCRIPT.match(path)
    if match:
        which, key = match.groups()
        return str((metadata.get(which) or {}).get(key, ""))
    simple: dict[str, str] = {
        "metadata.name": str(metadata.get("name", "")),
        "metadata.namespace": str(metadata.get("namespace", "")),
        "metadata.uid": str(metadata.get("uid", "")),
        "spec.nodeName": str(spec.get("nodeName", "")),
        "spec.serviceAccountName": str(spec.get("serviceAccountName", "")),
        "status.hostIP": ctx.host_ip,
        "status.hostIPs": ctx.host_ip,
        "status.podIP": ctx.pod_ip,
        "status.podIPs": ctx.pod_ip,
    }
    if path not in simple:
        raise EnvError(f"unsupported fieldRef.fieldPath {path!r}")
    return simple[path]


def _container_named(pod: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    spec = pod.get("spec") or {}
    for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        if container.get("name") == name:
            return dict(container)
    return None


def resource_value(ref: Mapping[str, Any], *, container: Mapping[str, Any], ctx: PodContext) -> str:
    """The value of a ``resourceFieldRef``: ceil(quantity / divisor), as the kubelet does.

    An unset limit reads as the node's allocatable (the kubelet's rule); an unset
    request reads as 0.
    """
    target = container
    if ref.get("containerName"):
        found = _container_named(ctx.pod, str(ref["containerName"]))
        if found is None:
            raise EnvError(f"resourceFieldRef: no container named {ref['containerName']!r}")
        target = found
    resource = str(ref.get("resource", ""))
    kind, _, name = resource.partition(".")
    resources = target.get("resources") or {}
    section = (resources.get(kind) or {}) if kind in ("limits", "requests") else None
    if section is None or name not in ("memory", "cpu", "ephemeral-storage"):
        raise EnvError(f"unsupported resourceFieldRef.resource {resource!r}")
    divisor = ref.get("divisor") or "1"
    try:
        if name == "cpu":
            default = ctx.node_allocatable_millicores if kind == "limits" else 0
            millis = parse_millicores(section["cpu"]) if "cpu" in section else default
            per = parse_millicores(divisor) or 1
            return str(math.ceil(millis / per))
        allocatable = (
            ctx.node_allocatable_memory
            if name == "memory"
            else ctx.node_allocatable_ephemeral_storage
        )
        default = allocatable if kind == "limits" else 0
        amount = parse_bytes(section[name]) if name in section else default
        per = parse_bytes(divisor) or 1
        return str(-(-amount // per))
    except QuantityError as exc:
        raise EnvError(f"resourceFieldRef {resource!r}: {exc}") from exc


# --- resolution ------------------------------------------------------------------------


def _key_ref(
    ref: Mapping[str, Any], *, kind: str, objects: Mapping[str, Mapping[str, str]], namespace: str
) -> str | None:
    """A ConfigMap/Secret key's value; None when optional and missing."""
    name = str(ref.get("name", ""))
    key = str(ref.get("key", ""))
    optional = bool(ref.get("optional", False))
    if name not in objects:
        if optional:
            return None
        raise EnvError(f'{kind.lower()} "{name}" not found')
    data = objects[name]
    if key not in data:
        if optional:
            return None
        raise EnvError(f"couldn't find key {key} in {kind} {namespace}/{name}")
    return data[key]


def resolve_env(
    container: Mapping[str, Any], *, ctx: PodContext, sources: Sources
) -> dict[str, str]:
    """The container's own environment (``envFrom``, then ``env``; later wins)."""
    namespace = str((ctx.pod.get("metadata") or {}).get("namespace", ""))
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = str(source.get("prefix", ""))
        if "configMapRef" in source:
            ref, kind, objects = source["configMapRef"], "ConfigMap", sources.config_maps
        elif "secretRef" in source:
            ref, kind, objects = source["secretRef"], "Secret", sources.secrets
        else:
            continue
        name = str(ref.get("name", ""))
        if name not in objects:
            if ref.get("optional"):
                continue
            raise EnvError(f'{kind.lower()} "{name}" not found')
        for key, text in objects[name].items():
            variable = prefix + key
            # Keys that cannot be variable names are skipped (the kubelet records an event).
            if variable and "=" not in variable:
                env[variable] = text
    for var in container.get("env") or []:
        name = str(var["name"])
        if "valueFrom" not in var:
            env[name] = expand(str(var.get("value", "")), env)
            continue
        value_from = var["valueFrom"] or {}
        value: str | None
        if "fieldRef" in value_from:
            value = field_value(str(value_from["fieldRef"].get("fieldPath", "")), ctx)
        elif "resourceFieldRef" in value_from:
            value = resource_value(value_from["resourceFieldRef"], container=container, ctx=ctx)
        elif "configMapKeyRef" in value_from:
            value = _key_ref(
                value_from["configMapKeyRef"],
                kind="ConfigMap",
                objects=sources.config_maps,
                namespace=namespace,
            )
        elif "secretKeyRef" in value_from:
            value = _key_ref(
                value_from["secretKeyRef"],
                kind="Secret",
                objects=sources.secrets,
                namespace=namespace,
            )
        else:
            raise EnvError(f"env {name}: unsupported valueFrom {sorted(value_from)}")
        if value is not None:
            env[name] = value
    return env


def runtime_env(
    *,
    base: Mapping[str, str],
    own: Mapping[str, str],
    defaults: Mapping[str, str] = {},
    forced: Mapping[str, str] = {},
) -> dict[str, str]:
    """The process environment: ``base`` < ``defaults`` < the container's own < ``forced``.

    ``defaults`` are what the runtime provides unless the pod says otherwise (HOSTNAME, a
    listen address); ``forced`` are the simulator's stand-ins for what it cannot model
    (the termination-message file, the target PID of an ephemeral container).
    """
    return {**base, **defaults, **own, **forced}


def expand_all(items: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """``command``/``args`` with ``$(VAR)`` expanded against the container's environment."""
    return [expand(str(item), env) for item in items]
