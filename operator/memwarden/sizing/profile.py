"""The kubelet settings that decide which cgroup files a pod's resources turn into."""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, get_args

from memwarden.sizing.constants import (
    FIRST_BETA_MINOR,
    FIRST_MEMORY_QOS_MINOR,
    FIRST_RESERVATION_POLICY_MINOR,
    ReservationPolicy,
)

# --------------------------------------------------------------------------- kubelet profile


@dataclass(frozen=True)
class KubeletProfile:
    """The kubelet settings that decide which cgroup files a pod's resources turn into.

    memwarden cannot read a kubelet's configuration, so the cluster's settings are
    configuration here; :meth:`defaults_for` gives each release's documented defaults.
    """

    kubernetes_minor: int = FIRST_BETA_MINOR
    """Kubelet minor version (1.x): selects that release's MemoryQoS rules."""
    memory_qos: bool = True
    """Feature gate ``MemoryQoS``: alpha and off by default in 1.22-1.36, beta and on in 1.37."""
    throttling_factor: float | None = None
    """``memoryThrottlingFactor`` in (0, 1]. None = unset, the 1.37 default: no memory.high."""
    reservation_policy: ReservationPolicy = "None"
    """``memoryReservationPolicy`` (1.36+); ignored before 1.36, where the field is absent."""
    page_size: int = 4096
    """The node's page size: the kubelet rounds memory.high down to whole pages."""
    node_allocatable: int | None = None
    """Node allocatable memory in bytes; replaces the limit in memory.high for a container
    without one. None = unknown (it differs per node): such memory.high values are not predicted.
    """

    def __post_init__(self) -> None:
        if self.kubernetes_minor < 0:
            raise ValueError(f"kubernetes_minor must not be negative, got {self.kubernetes_minor}")
        if self.memory_qos and self.kubernetes_minor < FIRST_MEMORY_QOS_MINOR:
            raise ValueError("memory_qos: the MemoryQoS feature gate exists from Kubernetes 1.22")
        factor = self.throttling_factor
        if factor is not None and (isinstance(factor, bool) or not 0 < factor <= 1):
            raise ValueError(f"throttling_factor: must be in (0, 1], got {factor!r}")
        if self.reservation_policy not in get_args(ReservationPolicy):
            raise ValueError(
                f"reservation_policy: must be None or TieredReservation,"
                f" got {self.reservation_policy!r}"
            )
        if self.page_size <= 0 or self.page_size & (self.page_size - 1):
            raise ValueError(f"page_size: must be a power of two, got {self.page_size}")
        if self.node_allocatable is not None and self.node_allocatable <= 0:
            raise ValueError(f"node_allocatable: must be positive, got {self.node_allocatable}")

    @classmethod
    def defaults_for(cls, minor: int, **overrides: Any) -> KubeletProfile:
        """The kubelet defaults of Kubernetes 1.<minor>, then ``overrides`` (field names).

        1.22-1.36: gate off, factor 0.9; 1.36 adds the reservation policy (None);
        1.37: gate on, factor unset, policy None. Before 1.22 there is no MemoryQoS at all.
        """
        beta = minor >= FIRST_BETA_MINOR
        alpha = FIRST_MEMORY_QOS_MINOR <= minor < FIRST_BETA_MINOR
        base = cls(
            kubernetes_minor=minor,
            memory_qos=beta,
            throttling_factor=0.9 if alpha else None,
            reservation_policy="None",
        )
        return replace(base, **overrides)

    @property
    def factor(self) -> Fraction | None:
        """The throttling factor as an exact fraction (``0.9`` is 9/10, not a binary float)."""
        if self.throttling_factor is None:
            return None
        return Fraction(str(self.throttling_factor))

    @property
    def has_reservation_policy(self) -> bool:
        """Whether this kubelet knows ``memoryReservationPolicy`` (1.36+)."""
        return self.kubernetes_minor >= FIRST_RESERVATION_POLICY_MINOR

    @property
    def throttles_unrequested(self) -> bool:
        """Whether a container with neither request nor limit gets memory.high (1.37+).

        Up to 1.36 the kubelet writes memory.high only when request != limit, so 0 == 0
        means none (kuberuntime_container_linux.go, v1.36.0 line 173); 1.37 also computes
        it when the request is 0, against node allocatable (v1.37.2 line 226).
        """
        return self.kubernetes_minor >= FIRST_BETA_MINOR

    @property
    def has_pod_level_memory_high(self) -> bool:
        """Whether the pod cgroup gets memory.high for pod-level resources (1.37+,
        ``ApplyPodLevelMemoryHigh``); before 1.37 only containers get one."""
        return self.kubernetes_minor >= FIRST_BETA_MINOR and self.throttles

    @property
    def throttles(self) -> bool:
        """Whether this kubelet writes memory.high at all."""
        return self.no_high_reason() is None

    def no_high_reason(self) -> str | None:
        """Why this kubelet writes no memory.high, naming the setting; None when it does."""
        if not self.memory_qos:
            return (
                "the MemoryQoS feature gate is off (the default before Kubernetes 1.37);"
                " enable it in the kubelet profile or use plain request/limit"
            )
        if self.throttling_factor is None:
            return (
                "memoryThrottlingFactor is unset (Kubernetes 1.37 default);"
                " set it in the kubelet profile or use plain request/limit"
            )
        return None

    def no_protection_reason(self) -> str | None:
        """Why this kubelet writes no memory.min/low, naming the setting; None when it does."""
        if not self.memory_qos:
            return (
                "the MemoryQoS feature gate is off (the default before Kubernetes 1.37);"
                " enable it in the kubelet profile or use plain request/limit"
            )
        if self.has_reservation_policy and self.reservation_policy != "TieredReservation":
            return (
                "memoryReservationPolicy is None (the default since Kubernetes 1.36);"
                " set TieredReservation in the kubelet profile or use plain request/limit"
            )
        return None
