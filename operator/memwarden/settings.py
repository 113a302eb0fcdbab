"""The operator's one settings object: built once at start from the environment, logged once.

Every field documents its default and why. Secrets never appear here (only paths to
them), so logging the whole object is safe.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from memwarden.quantity import parse_bytes
from memwarden.sizing import KubeletProfile

ENV_PREFIX = "MEMWARDEN_"


class KubeletSettings(BaseModel):
    """The cluster's kubelet MemoryQoS configuration, which memwarden cannot read itself.

    The kubelet does not publish its MemoryQoS settings through the API, so the operator
    is told them. The defaults are those of a stock Kubernetes 1.37 kubelet.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kubernetes_minor: int = Field(
        default=37,
        ge=22,
        le=99,
        description="Kubernetes minor version of the nodes (MemoryQoS changed in 1.36, 1.37).",
    )
    memory_qos: bool | None = Field(
        default=None,
        description="MemoryQoS feature gate; None = the version's default (on from 1.37).",
    )
    throttling_factor: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="memoryThrottlingFactor; None = unset, the 1.37 default (no memory.high).",
    )
    reservation_policy: Literal["None", "TieredReservation"] = Field(
        default="None",
        description="memoryReservationPolicy (1.36+); None, the default, writes no memory.min/low.",
    )
    page_size: int = Field(
        default=4096, description="The nodes' page size (x86-64 and most arm64)."
    )
    node_allocatable: int | None = Field(
        default=None,
        description="Node allocatable memory in bytes: replaces the limit in memory.high for "
        "containers without one. None = unknown (nodes differ): such memory.high values, and "
        "a GOMEMLIMIT derived from them, are not predicted.",
    )

    def profile(self) -> KubeletProfile:
        """The sizing engine's view: the version's defaults, then what was configured."""
        overrides: dict[str, object] = {
            "reservation_policy": self.reservation_policy,
            "page_size": self.page_size,
            "node_allocatable": self.node_allocatable,
        }
        if self.memory_qos is not None:
            overrides["memory_qos"] = self.memory_qos
        if self.throttling_factor is not None or self.kubernetes_minor >= 37:
            overrides["throttling_factor"] = self.throttling_factor
        return KubeletProfile.defaults_for(self.kubernetes_minor, **overrides)


class Settings(BaseModel):
    """Everything the operator needs to know at start."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    namespace: str = Field(
        default="memwarden-system",
        description="The operator's own namespace: never mutated, holds its Secrets.",
    )
    kubelet: KubeletSettings = Field(default_factory=KubeletSettings)
    webhook_host: str = Field(
        default="0.0.0.0",
        description="Address the admission webhook listens on.",
    )
    webhook_port: int = Field(default=9443, description="The webhook's HTTPS port (non-root).")
    webhook_cert_file: str | None = Field(
        default=None, description="TLS certificate of the webhook; None = memwarden makes one."
    )
    webhook_key_file: str | None = Field(default=None, description="Its private key.")
    webhook_cert_dir: str = Field(
        default="/tmp/memwarden-certs",
        description="Where self-made certificates are written (an emptyDir in the chart).",
    )
    excluded_namespaces: tuple[str, ...] = Field(
        default=("kube-system",),
        description="Never governed, besides the operator's own namespace: the webhook "
        "configuration excludes them too, so pod creation there never waits on memwarden.",
    )
    status_interval_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How often policy status is recomputed from the pod index; 10 s keeps "
        "kubectl get fresh without writing status more than needed (writes only on change).",
    )
    health_port: int = Field(default=8080, description="/healthz, /readyz and /metrics.")
    http_host: str = Field(
        default="0.0.0.0",
        description="Address of the operator's HTTP API (Alertmanager receiver, evidence "
        "store): all interfaces, since Alertmanager reaches it through a Service.",
    )
    http_port: int = Field(
        default=8443,
        ge=0,
        le=65535,
        description="Port of the operator's HTTP API: unprivileged (non-root image), apart "
        "from the webhook's 9443 and health's 8080, and the usual one for a TLS API since "
        "bearer tokens cross it. 0 = an ephemeral port (tests).",
    )
    http_cert_file: str | None = Field(
        default=None,
        description="TLS certificate of the HTTP API; None = plain HTTP (loopback, tests, "
        "or a mesh that encrypts). Production should mount one: the bearer token of "
        "Alertmanager and evidence uploads cross this port.",
    )
    http_key_file: str | None = Field(default=None, description="Its private key.")
    alertmanager_token_file: str | None = Field(
        default=None,
        description="File holding the bearer token Alertmanager must send (a mounted "
        "Secret; re-read when it changes). None = the receiver is off: without a token "
        "anyone could open incidents.",
    )
    dry_run: bool = Field(
        default=False, description="Compute and log, never write to the cluster (like --dry-run)."
    )

    @field_validator("excluded_namespaces", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @property
    def never_governed(self) -> frozenset[str]:
        return frozenset((*self.excluded_namespaces, self.namespace))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build from ``MEMWARDEN_*`` variables (``MEMWARDEN_KUBELET_THROTTLING_FACTOR``...)."""
        env = os.environ if environ is None else environ
        top: dict[str, object] = {}
        kubelet: dict[str, object] = {}
        for key, value in env.items():
            if not key.startswith(ENV_PREFIX):
                continue
            name = key[len(ENV_PREFIX) :].lower()
            if name.startswith("kubelet_"):
                field = name[len("kubelet_") :]
                if field == "node_allocatable":
                    kubelet[field] = parse_bytes(value)
                elif field in {"throttling_factor", "memory_qos"} and value.lower() in {
                    "",
                    "none",
                    "unset",
                }:
                    kubelet[field] = None
                else:
                    kubelet[field] = value
            elif name in cls.model_fields:
                top[name] = value
        return cls.model_validate({**top, "kubelet": KubeletSettings.model_validate(kubelet)})

    def for_log(self) -> str:
        """One line with every setting, for the single start-up log record."""
        return self.model_dump_json()
