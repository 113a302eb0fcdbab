"""The MemoryQoS settings of a real kubelet configuration, read as the kubelet reads them.

``memwarden explain --kubelet-config FILE`` takes the file a kubelet runs with
(``/var/lib/kubelet/config.yaml``), kubeadm's ``kubelet-config`` ConfigMap (its
``data.kubelet`` holds that file), or a kubeadm configuration file with a
KubeletConfiguration among its documents; ``--feature-gates`` is parsed like the kubelet's
flag, which wins over the file. Only ``featureGates.MemoryQoS``, ``memoryThrottlingFactor``
and ``memoryReservationPolicy`` matter here; every other field is ignored.

Pure: text in, values out. The kubelet version is not in the file; it comes from
memwarden's own ``kubernetesMinor``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, get_args

import yaml

from memwarden.sizing import FIRST_BETA_MINOR, KubeletProfile, ReservationPolicy

__all__ = [
    "KUBELET_CONFIG_API",
    "KubeletConfigError",
    "KubeletMemoryConfig",
    "kubelet_rejects",
    "parse_feature_gates",
    "parse_kubelet_config",
]

KUBELET_CONFIG_API: Final = "kubelet.config.k8s.io/v1beta1"
KUBEADM_GROUP: Final = "kubeadm.k8s.io/"
#: The key of kubeadm's ``kube-system/kubelet-config`` ConfigMap that holds the file.
KUBEADM_CONFIGMAP_KEY: Final = "kubelet"
#: The 1.36 default of memoryThrottlingFactor, which a 1.37 kubelet still accepts with the
#: gate off (pkg/kubelet/apis/config/validation/validation.go, v1.37.2 line 50).
PREVIOUS_DEFAULT_FACTOR: Final = 0.9
#: strconv.ParseBool, which the kubelet's ``--feature-gates`` (MapStringBool) uses.
_GO_BOOLS: Final = {
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
}


class KubeletConfigError(ValueError):
    """The file or flag is not a kubelet configuration memwarden can read; names the field."""


@dataclass(frozen=True)
class KubeletMemoryConfig:
    """What a KubeletConfiguration says about MemoryQoS; None: not in the file (the
    kubelet then uses its version's default)."""

    memory_qos: bool | None = None
    memory_throttling_factor: float | None = None
    memory_reservation_policy: ReservationPolicy | None = None

    def settings(self) -> dict[str, object]:
        """The values given, keyed like memwarden's kubelet settings (camelCase)."""
        values = {
            "memoryQoS": self.memory_qos,
            "memoryThrottlingFactor": self.memory_throttling_factor,
            "memoryReservationPolicy": self.memory_reservation_policy,
        }
        return {key: value for key, value in values.items() if value is not None}


def parse_kubelet_config(text: str, *, source: str) -> KubeletMemoryConfig:
    """The MemoryQoS settings of the one KubeletConfiguration in ``text``.

    ``text``: a KubeletConfiguration, a ConfigMap with it under ``data.kubelet`` (kubeadm),
    or several documents of which kubeadm's own kinds are skipped. Errors name ``source``
    and the field.
    """
    found = list(_kubelet_configurations(text, source=source))
    if not found:
        raise KubeletConfigError(f"{source}: no KubeletConfiguration ({KUBELET_CONFIG_API})")
    if len(found) > 1:
        where = ", ".join(origin for origin, _ in found)
        raise KubeletConfigError(f"{source}: more than one KubeletConfiguration ({where})")
    origin, doc = found[0]
    return _memory_settings(doc, origin=origin)


def _documents(text: str, *, source: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise KubeletConfigError(f"{source}: not YAML: {exc}") from exc
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        origin = f"{source}#{index + 1}" if len(docs) > 1 else source
        if not isinstance(doc, Mapping):
            raise KubeletConfigError(f"{origin}: not a Kubernetes object")
        yield origin, doc


def _kubelet_configurations(text: str, *, source: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for origin, doc in _documents(text, source=source):
        api_version, kind = doc.get("apiVersion"), doc.get("kind")
        if kind == "KubeletConfiguration":
            if api_version != KUBELET_CONFIG_API:
                raise KubeletConfigError(
                    f"{origin}: apiVersion: {api_version!r} is not supported for"
                    f" KubeletConfiguration; memwarden reads {KUBELET_CONFIG_API}"
                )
            yield origin, doc
        elif kind == "ConfigMap" and api_version == "v1":
            data = doc.get("data")
            body = data.get(KUBEADM_CONFIGMAP_KEY) if isinstance(data, Mapping) else None
            if not isinstance(body, str):
                raise KubeletConfigError(
                    f"{origin}: data.{KUBEADM_CONFIGMAP_KEY}: missing; kubeadm's kubelet-config"
                    " ConfigMap keeps the KubeletConfiguration there"
                )
            yield from _kubelet_configurations(body, source=f"{origin} data.kubelet")
        elif isinstance(api_version, str) and api_version.startswith(KUBEADM_GROUP):
            continue  # InitConfiguration, ClusterConfiguration... beside it in a kubeadm file
        else:
            raise KubeletConfigError(
                f"{origin}: kind: {kind!r} (apiVersion {api_version!r}) is not a"
                f" KubeletConfiguration ({KUBELET_CONFIG_API}) or kubeadm's kubelet-config"
                " ConfigMap"
            )


def _memory_settings(doc: Mapping[str, Any], *, origin: str) -> KubeletMemoryConfig:
    gates = doc.get("featureGates")
    if gates is not None and not isinstance(gates, Mapping):
        raise KubeletConfigError(f"{origin}: featureGates: must be a map of gate names to bools")
    gate = (gates or {}).get("MemoryQoS")
    if gate is not None and not isinstance(gate, bool):
        raise KubeletConfigError(
            f"{origin}: featureGates.MemoryQoS: must be true or false, got {gate!r}"
        )
    factor = doc.get("memoryThrottlingFactor")
    if factor is not None and (
        isinstance(factor, bool) or not isinstance(factor, int | float) or not 0 < factor <= 1
    ):
        raise KubeletConfigError(
            f"{origin}: memoryThrottlingFactor: must be a number greater than 0 and at most 1,"
            f" got {factor!r}"
        )
    policy = doc.get("memoryReservationPolicy")
    if policy == "":
        policy = None  # the kubelet defaults an empty policy to None
    if policy is not None and policy not in get_args(ReservationPolicy):
        raise KubeletConfigError(
            f"{origin}: memoryReservationPolicy: must be None or TieredReservation, got {policy!r}"
        )
    return KubeletMemoryConfig(
        memory_qos=gate,
        memory_throttling_factor=None if factor is None else float(factor),
        memory_reservation_policy=policy,
    )


def parse_feature_gates(flag: str) -> dict[str, bool]:
    """``--feature-gates`` as the kubelet parses it: ``Gate=bool`` pairs, comma-separated."""
    gates: dict[str, bool] = {}
    for pair in flag.split(","):
        if not pair.strip():
            continue
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise KubeletConfigError(f"--feature-gates: missing bool value for {pair.strip()!r}")
        if value.strip() not in _GO_BOOLS:
            raise KubeletConfigError(
                f"--feature-gates: {name}: must be true or false, got {value.strip()!r}"
            )
        gates[name] = _GO_BOOLS[value.strip()]
    return gates


def kubelet_rejects(profile: KubeletProfile) -> str | None:
    """Why a kubelet of this version would refuse these settings at start, naming the
    field; None when it accepts them (pkg/kubelet/apis/config/validation/validation.go)."""
    if (
        profile.kubernetes_minor >= FIRST_BETA_MINOR
        and not profile.memory_qos
        and profile.throttling_factor not in {None, PREVIOUS_DEFAULT_FACTOR}
    ):
        return (
            "memoryThrottlingFactor: must not be set when the MemoryQoS feature gate is"
            " disabled (the 1.37 kubelet refuses to start)"
        )
    if (
        profile.has_reservation_policy
        and not profile.memory_qos
        and profile.reservation_policy == "TieredReservation"
    ):
        return (
            "memoryReservationPolicy: TieredReservation requires the MemoryQoS feature gate"
            " (the kubelet refuses to start)"
        )
    return None
