"""Memory sizing: policy intent -> pod requests/limits -> the cgroup v2 files the kubelet writes.

Pure and computational: data in, data out. It imports no Kubernetes client, kopf, pydantic
or network library, and not ``api.py``: the handlers convert the CRD models into the plain
frozen types of this package. One module per section: constants, profile (the kubelet's
settings), shape (a pod's resources and QoS), cgroup (the kubelet model), rules (policy
rules solved), pod (size_pod). Import from ``memwarden.sizing``: the sections are its
layout, not its interface. The kubelet model is KEP-2570 (MemoryQoS) as summarised in
DESIGN.md §6; the user-facing decisions are written down in ``docs/sizing.md``.

Bytes are ``int`` everywhere; CPU is in millicores. ``None`` and ``0`` both mean "unset",
as they do to the kubelet, which reads an absent quantity as zero.
"""

from __future__ import annotations

from memwarden.sizing.cgroup import (
    CgroupValues,
    expected_cgroup,
    expected_pod_cgroup,
)
from memwarden.sizing.constants import (
    FIRST_BETA_MINOR,
    FIRST_MEMORY_QOS_MINOR,
    FIRST_RESERVATION_POLICY_MINOR,
    GOMEMLIMIT_MIB_FLOOR_FROM,
    HEADROOM_FRACTION,
    HEADROOM_MIN,
    MIB,
    QosClass,
    ReservationPolicy,
)
from memwarden.sizing.pod import (
    ContainerSizing,
    PodSizing,
    size_pod,
)
from memwarden.sizing.profile import (
    KubeletProfile,
)
from memwarden.sizing.rules import (
    GoRuntimeRule,
    MemoryRule,
    ResolvedMemory,
    resolve_rule,
)
from memwarden.sizing.shape import (
    ContainerResources,
    PodShape,
    qos_class,
)

__all__ = [
    "FIRST_BETA_MINOR",
    "FIRST_MEMORY_QOS_MINOR",
    "FIRST_RESERVATION_POLICY_MINOR",
    "GOMEMLIMIT_MIB_FLOOR_FROM",
    "HEADROOM_FRACTION",
    "HEADROOM_MIN",
    "MIB",
    "CgroupValues",
    "ContainerResources",
    "ContainerSizing",
    "GoRuntimeRule",
    "KubeletProfile",
    "MemoryRule",
    "PodShape",
    "PodSizing",
    "QosClass",
    "ReservationPolicy",
    "ResolvedMemory",
    "expected_cgroup",
    "expected_pod_cgroup",
    "qos_class",
    "resolve_rule",
    "size_pod",
]
