"""The operator's one settings object: built once at start from the environment, logged once.

Settings come in sections, as kopf's own do (``settings.webhook.port``,
``settings.evidence.max_total_bytes``...). Every field documents its default and why
(docs/settings.md lists them, generated from here). Secrets never appear here (only paths
to them), so logging the whole object is safe.

The environment names each field twice: ``MEMWARDEN_<SECTION>__<FIELD>`` (pydantic-settings'
nested form) and the flat ``MEMWARDEN_<SECTION>_<FIELD>`` that the chart, the tests and
earlier releases use (``flat_env_name``); the nested form wins when both are set.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

from memwarden.quantity import DURATION_PATTERN, parse_bytes
from memwarden.sizing import KubeletProfile

ENV_PREFIX = "MEMWARDEN_"
NESTED_DELIMITER = "__"


class KubeletSettings(BaseModel):
    """The cluster's kubelet MemoryQoS configuration, which memwarden cannot read itself.

    The kubelet does not publish its MemoryQoS settings through the API, so the operator
    is told them. The defaults are those of a stock Kubernetes 1.37 kubelet. Spelled in
    camelCase as the chart's ``kubelet:`` values and the KubeletConfiguration fields are;
    the Python names (``throttling_factor``...) are accepted too, for the environment.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )

    kubernetes_minor: int = Field(
        alias="kubernetesMinor",
        default=37,
        description="Kubernetes minor version of the nodes (MemoryQoS changed in 1.36, 1.37).",
    )
    memory_qos: bool | None = Field(
        alias="memoryQoS",
        default=None,
        description="MemoryQoS feature gate; None = the version's default (on from 1.37).",
    )
    throttling_factor: float | None = Field(
        alias="memoryThrottlingFactor",
        default=None,
        description="memoryThrottlingFactor; None = unset, the 1.37 default (no memory.high).",
    )
    reservation_policy: Literal["None", "TieredReservation"] = Field(
        alias="memoryReservationPolicy",
        default="None",
        description="memoryReservationPolicy (1.36+); None, the default, writes no memory.min/low.",
    )
    page_size: int = Field(
        alias="pageSize", default=4096, description="The nodes' page size (x86-64 and most arm64)."
    )
    node_allocatable: int | None = Field(
        alias="nodeAllocatable",
        default=None,
        description="Node allocatable memory in bytes: replaces the limit in memory.high for "
        "containers without one. None = unknown (nodes differ): such memory.high values, and "
        "a GOMEMLIMIT derived from them, are not predicted.",
    )

    @field_validator("memory_qos", "throttling_factor", mode="before")
    @classmethod
    def _unset(cls, value: object) -> object:
        """``none``, ``unset`` or an empty value (a chart value left empty) is None."""
        if isinstance(value, str) and value.strip().lower() in {"", "none", "unset"}:
            return None
        return value

    @field_validator("node_allocatable", mode="before")
    @classmethod
    def _quantity(cls, value: object) -> object:
        """Also as a quantity (``16Gi``), as the chart's value is written."""
        if isinstance(value, str):
            return parse_bytes(value) if value.strip() else None
        return value

    @model_validator(mode="after")
    def _a_valid_profile(self) -> KubeletSettings:
        """The sizing engine's ``KubeletProfile`` checks the values (one set of rules):
        settings it would refuse are refused here, at start, naming the field."""
        self.profile()  # its ValueError names the field; pydantic reports it as invalid
        return self

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


class _Section(BaseModel):
    """A section of the settings: read-only once built, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _split_commas(value: object) -> object:
    """A list setting from the environment: comma-separated (``kube-system,monitoring``)."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class WebhookSettings(_Section):
    """The admission webhook's server and its TLS certificates: made and rotated by
    memwarden (handlers/certificates.py) unless cert_file/key_file are given (cert-manager,
    or the tests')."""

    host: str = Field(
        default="0.0.0.0",
        description="Address the admission webhook listens on.",
    )
    port: int = Field(default=9443, description="The webhook's HTTPS port (non-root).")
    cert_file: str | None = Field(
        default=None, description="TLS certificate of the webhook; None = memwarden makes one."
    )
    key_file: str | None = Field(default=None, description="Its private key.")
    cert_dir: str = Field(
        default="/tmp/memwarden-certs",
        description="Where self-made certificates are written (an emptyDir in the chart).",
    )
    configuration_name: str = Field(
        default="memwarden",
        description="The MutatingWebhookConfiguration memwarden ships (chart, manifests.py), "
        "whose caBundle the certificate rotation keeps current.",
    )
    service_name: str = Field(
        default="memwarden-webhook",
        description="The webhook's Service: its DNS names go into the serving certificate.",
    )
    ca_secret: str = Field(
        default="memwarden-webhook-ca",
        description="Secret in the operator's namespace holding the webhook CA, shared by "
        "replicas and kept across restarts (an emptyDir is not).",
    )
    cert_validity_seconds: float = Field(
        default=90 * 86400.0,
        gt=0,
        description="Life of a self-made CA and serving certificate: 90 days, as cert-manager "
        "and public CAs default to. Short enough that a leaked key soon expires, long enough "
        "that a failing renewal has weeks to be noticed.",
    )
    cert_renew_before_seconds: float = Field(
        default=30 * 86400.0,
        gt=0,
        description="Rotation starts this long before expiry: a month (a third of the "
        "validity, cert-manager's default), so an operator that cannot renew is seen in its "
        "logs and metrics long before pods are admitted unmutated.",
    )
    ca_propagation_seconds: float = Field(
        default=60.0,
        ge=0,
        description="A new CA is in the caBundle this long before it signs: the API server "
        "sees a webhook configuration change within seconds; a minute covers a slow watch.",
    )
    cert_check_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How often the rotation checks the certificates (one Secret and one "
        "webhook configuration read): cheap, and far below any sensible renew-before.",
    )
    file_check_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How often the webhook server looks for new certificate files (its own "
        "rotation, or cert-manager's through the mounted Secret) and reloads them in place.",
    )
    drain_seconds: float = Field(
        default=5.0,
        ge=0,
        le=120,
        description="On SIGTERM the replica turns not ready (/readyz 503) and its webhook "
        "keeps answering this long, closing each connection after its answer, so the "
        "Service's endpoints drop it and the API server reconnects to another replica; "
        "then it stops listening and finishes the reviews in flight. 0 = stop at once "
        "(pods reviewed meanwhile are admitted unmutated). Must fit, with the rest of the "
        "shutdown, in the pod's terminationGracePeriodSeconds (docs/ha.md).",
    )


class AdmissionSettings(_Section):
    """How admission reviews are answered and logged."""

    process: Literal["worker", "inline"] = Field(
        default="worker",
        description="worker: the webhook answers from a process of its own "
        "(webhook/worker.py), so the operator's other work never delays a pod create; "
        "inline: on the operator's event loop (one process, ~40 MiB less).",
    )
    background_nice: int = Field(
        default=5,
        ge=0,
        le=19,
        description="With admission.process worker: the operator's own process (status, "
        "risk, captures, uploads) lowers its CPU priority by this much once the worker runs, "
        "so that on a busy CPU a review waits less for the operator's background work.",
    )
    summary_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Admission logs per pod at DEBUG only, and one INFO line per interval "
        "counting outcomes: a minute is readable in a busy cluster and silent at rest.",
    )


class StatusSettings(_Section):
    """When MemoryPolicy statuses are recomputed."""

    debounce_seconds: float = Field(
        default=2.0,
        gt=0,
        description="How long pod and policy changes gather before the status of their "
        "namespaces' policies is recomputed: a Deployment's 50 new pods cost one pass and at "
        "most one write per policy, and status still follows within seconds.",
    )
    resync_seconds: float = Field(
        default=600.0,
        gt=0,
        description="Every policy's status is recomputed this often even with no change "
        "seen (a safety net: writes happen only on change). 10 min costs one pass over the "
        "pod index, about 1 s of CPU for 10,000 pods.",
    )


class HttpSettings(_Section):
    """The operator's HTTP API: the Alertmanager receiver and the evidence store."""

    host: str = Field(
        default="0.0.0.0",
        description="Address of the operator's HTTP API (Alertmanager receiver, evidence "
        "store): all interfaces, since Alertmanager reaches it through a Service.",
    )
    port: int = Field(
        default=8443,
        ge=0,
        le=65535,
        description="Port of the operator's HTTP API: unprivileged (non-root image), apart "
        "from the webhook's 9443 and health's 8080, and the usual one for a TLS API since "
        "bearer tokens cross it. 0 = an ephemeral port (tests).",
    )
    cert_file: str | None = Field(
        default=None,
        description="TLS certificate of the HTTP API (with http.key_file), reloaded in place "
        "when it changes. None: the webhook's serving certificate (self-made and rotated, or "
        "cert-manager's): one Service carries both, so its names are the same.",
    )
    key_file: str | None = Field(default=None, description="Its private key.")
    insecure: bool = Field(
        default=False,
        description="Serve the HTTP API in plain HTTP: an explicit opt-out, for a mesh that "
        "encrypts or a loopback-only setup. Off by default: Alertmanager's bearer token, "
        "upload tokens, evidence readers' tokens and the bundles (core dumps) cross it.",
    )
    alertmanager_token_file: str | None = Field(
        default=None,
        description="File holding the bearer token Alertmanager must send (a mounted "
        "Secret; re-read when it changes). None = the receiver is off: without a token "
        "anyone could open incidents.",
    )


class RiskSettings(_Section):
    """OOM-risk evaluation against Prometheus (docs/risk.md)."""

    prometheus_url: str | None = Field(
        default=None,
        description="Prometheus to watch for OOM risk (e.g. http://prometheus.monitoring:9090). "
        "None = no risk evaluation: admission and status never need Prometheus.",
    )
    prometheus_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Per query: a Prometheus slower than this counts as unavailable. Well "
        "under risk.interval_seconds, so a slow Prometheus never stacks up cycles.",
    )
    concurrent_namespaces: int = Field(
        default=8,
        ge=1,
        description="Namespaces evaluated at once in a risk cycle: their queries overlap in "
        "Prometheus, so 100 namespaces fit in a 15 s interval; more would only queue there.",
    )
    interval_seconds: float = Field(
        default=15.0,
        gt=0,
        description="How often each namespace with oomRisk policies is evaluated: one "
        "scrape interval of a typical Prometheus; 'for' is evaluated by Prometheus, so a "
        "longer interval only delays an incident, it never loses one.",
    )
    backoff_max_seconds: float = Field(
        default=300.0,
        gt=0,
        description="While Prometheus fails, a policy's evaluations back off exponentially "
        "from risk.interval_seconds up to this (5 min): quick recovery, little load on a "
        "struggling Prometheus.",
    )
    regression_window: str = Field(
        default="5m",
        pattern=DURATION_PATTERN,
        description="Range of predict_linear/deriv for timeToLimit: long enough to smooth the "
        "GC sawtooth of a Go heap, short enough to follow a leak.",
    )
    rate_window: str = Field(
        default="1m",
        pattern=DURATION_PATTERN,
        description="Range of rate() for major faults and PSI: four scrapes at a 15 s interval.",
    )
    oom_window: str = Field(
        default="5m",
        pattern=DURATION_PATTERN,
        description="An OOM kill (container_oom_events_total or a pod's OOMKilled lastState) "
        "counts for this long: covers an operator restart, and stays below any sensible "
        "cooldown so one kill opens one incident.",
    )
    recording_rules: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Whether the risk queries read memwarden's recording rules "
        "(docs/risk.md) instead of the raw cAdvisor series. auto: when Prometheus has them "
        "for the windows above, else the raw series (nothing to install for small "
        "clusters); on: required, and without them risk evaluation fails loudly "
        "(RecordingRulesMissing) instead of loading Prometheus with raw queries; off: raw "
        "series only.",
    )
    recording_rules_check_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How often auto/on look for the recording rules: one instant query of "
        "one series per rule set. Five minutes: rules installed later are used soon enough, "
        "and rules removed are noticed within five minutes (their signals are silent "
        "meanwhile, as with any missing series).",
    )

    @field_validator("prometheus_url", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        """``MEMWARDEN_PROMETHEUS_URL=`` (a chart value left empty) turns risk evaluation off."""
        return None if isinstance(value, str) and not value.strip() else value


class CaptureSettings(_Section):
    """Captures: the debug container that gathers an incident's evidence."""

    max_concurrent: int = Field(
        default=3,
        ge=1,
        description="Cluster-wide cap on incidents Pending or Capturing: a capture costs the "
        "target pod memory (the debug container counts against it) and the node CPU, so a "
        "fleet-wide leak must not set off a capture storm.",
    )
    toolbox_image: str = Field(
        default="ghcr.io/memwarden/memwarden:0.1.0",
        description="Image of the ephemeral debug container (the operator's own image: it "
        "holds `memwarden capture`, gdb/gcore and the Go tools, so versions always match).",
    )
    default_cooldown: str = Field(
        default="30m",
        pattern=DURATION_PATTERN,
        description="Cooldown for incidents whose trigger matched no policy's capture section "
        "(Alertmanager alerts, manual incidents): the CRD's default for capture.cooldown, so "
        "a pod is never captured more often than a policy would allow.",
    )
    timeout_seconds: float = Field(
        default=300.0,
        description="An incident still Capturing this long after its debug container was "
        "added is Failed: a 2Gi core takes about a minute to write and upload.",
    )
    pod_wait_seconds: float = Field(
        default=120.0,
        description="How long an incident waits for its pod to be Running before it fails.",
    )


class EvidenceSettings(_Section):
    """The evidence store: where bundles live, who may upload and read them, how long they stay."""

    dir: str = Field(
        default="/var/lib/memwarden/evidence",
        description="Root of the evidence store (a PersistentVolumeClaim in the chart: "
        "bundles must survive the operator's restarts).",
    )
    key_file: str | None = Field(
        default=None,
        description="File holding the key (>= 32 bytes) that signs upload tokens, mounted from "
        "a Secret so tokens survive restarts. None: a random key per process (development "
        "only: a restart during a capture then refuses that capture's upload).",
    )
    base_url: str | None = Field(
        default=None,
        description="The evidence API as the debug containers reach it, e.g. "
        "https://memwarden.memwarden-system.svc:8443/evidence. None: http://<http.host>:"
        "<http.port>/evidence (right for the local environment only).",
    )
    upload_ca_file: str | None = Field(
        default=None,
        description="CA bundle (PEM) the debug containers trust for uploads, passed to them "
        "as text (an ephemeral container cannot mount a volume). None: with self-made "
        "certificates, their CA bundle (current and next CA, kept current by the rotation); "
        "else the system trust store.",
    )
    token_audiences: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("memwarden",),
        min_length=1,
        description="Audiences a reader's token must carry (TokenReview): a dedicated one, so "
        "a token sent to memwarden is useless against the API server and tokens made for "
        "other services are refused here. Add the API server's audience (e.g. "
        "https://kubernetes.default.svc.cluster.local) to accept kubeconfig tokens as they "
        "are, at the cost of that protection.",
    )
    max_bundle_bytes: int = Field(
        default=3 * 2**30,
        description="Largest bundle accepted: a 2Gi core (capture.maxCoreBytes default) "
        "compresses to well under this, with room for profiles and the trace.",
    )
    max_age_seconds: float = Field(
        default=7 * 24 * 3600.0,
        description="Bundles older than a week are deleted: long enough to investigate an "
        "incident, short enough that cores (which hold process memory) do not linger.",
    )
    max_total_bytes: int | None = Field(
        default=None,
        gt=0,
        description="Uploads are refused (507) when stored plus in-flight bytes would exceed "
        "this; nothing is deleted to make room. None: with backend pvc, 80% of the evidence "
        "volume's size (statvfs at start), leaving the rest for partial files and the "
        "filesystem; with backend s3, no total cap (a bucket has no size: bound it with "
        "namespace_max_bytes and retention, or a bucket quota).",
    )
    namespace_max_bytes: int | None = Field(
        default=None,
        gt=0,
        description="Per-namespace quota of the evidence store: one namespace's captures "
        "cannot take the whole volume from the others. Retention deletes a namespace's "
        "oldest bundles when it is over (after the quota was lowered). None: no quota "
        "beyond the total cap.",
    )
    retention_interval_seconds: float = Field(
        default=600.0, description="How often retention runs; deletion is cheap, ten minutes."
    )
    upload_token_ttl_seconds: float = Field(
        default=3600.0,
        description="Upload tokens expire after an hour, or with the capture "
        "(capture.timeout_seconds) if sooner: a token read from a pod spec is useless once "
        "its capture is over.",
    )
    upload_source_check: bool = Field(
        default=True,
        description="Accept an upload only from the target pod's own addresses (the debug "
        "container shares its network namespace), so a copied token is useless elsewhere. "
        "Turn off only where a proxy in front of the operator hides client addresses.",
    )

    backend: Literal["pvc", "s3"] = Field(
        default="pvc",
        description="Where bundles live: pvc (a filesystem at evidence.dir, one replica) or s3 "
        "(an S3-compatible bucket, evidence.s3_*: what replicas > 1 need). Credentials for s3 "
        "come from boto3's default chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (a Secret) "
        "or AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE (docs/evidence.md).",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="The S3 endpoint, e.g. https://minio.storage.svc:9000. None: AWS S3 of "
        "evidence.s3_region.",
    )
    s3_bucket: str | None = Field(
        default=None,
        description="The bucket bundles go to (required with backend s3); it must exist.",
    )
    s3_prefix: str = Field(
        default="memwarden/",
        description="Key prefix of every object the operator writes, so the bucket can be "
        "shared: bundles are <prefix><namespace>/<incident>/...",
    )
    s3_region: str = Field(default="us-east-1", description="The bucket's region (SigV4).")
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto",
        description="Bucket in the host name (virtual) or in the path (path: most "
        "self-hosted servers, MinIO, SeaweedFS).",
    )
    s3_ca_file: str | None = Field(
        default=None,
        description="CA bundle (PEM) to verify the endpoint's certificate. None: the system "
        "trust store.",
    )
    s3_part_bytes: int = Field(
        default=8 * 2**20,
        ge=5 * 2**20,
        le=5 * 2**30,
        description="Multipart part size: an upload holds one part in memory (plus a 1 MiB "
        "block), whatever the bundle's size; S3's minimum is 5 MiB, and 10,000 parts of "
        "8 MiB allow 78 GiB.",
    )

    s3_presign_downloads_seconds: int | None = Field(
        default=None,
        ge=1,
        le=60,
        description="Off by default: downloads stream through the evidence API after its "
        "TokenReview and SubjectAccessReview. Set (1-60), an authorised download is "
        "answered 307 to a presigned GET of the object valid that long: the bytes then "
        "bypass the operator, but the reader must reach the bucket, and the URL is a bearer "
        "credential until it expires (docs/evidence.md).",
    )

    @field_validator(
        "max_bundle_bytes", "max_total_bytes", "namespace_max_bytes", "s3_part_bytes", mode="before"
    )
    @classmethod
    def _bytes(cls, value: object) -> object:
        """Byte sizes also as quantities (``16Gi``); an empty value is None (the default)."""
        if isinstance(value, str):
            return parse_bytes(value) if value.strip() else None
        return value

    _token_audiences = field_validator("token_audiences", mode="before")(_split_commas)

    @model_validator(mode="after")
    def _s3_has_a_bucket(self) -> EvidenceSettings:
        """The S3 backend needs a bucket, and its prefix must be a folder (or empty)."""
        if self.backend == "s3" and not self.s3_bucket:
            raise ValueError("evidence.s3_bucket is required when evidence.backend is s3")
        endpoint = self.s3_endpoint_url
        if endpoint is not None and not re.fullmatch(r"https?://[^/\s]+/?", endpoint):
            raise ValueError(
                f"evidence.s3_endpoint_url must be http(s)://host[:port] (got {endpoint!r})"
            )
        if self.s3_prefix and not self.s3_prefix.endswith("/"):
            raise ValueError(f"evidence.s3_prefix must end with '/' (got {self.s3_prefix!r})")
        return self


class UpdateSettings(_Section):
    """The update modes: resizing and evicting running pods."""

    enabled: bool = Field(
        default=True,
        description="The kill switch of the update modes: false, and no running pod is "
        "resized or evicted, whatever the policies say (status still shows what would be "
        "done). Policies are a tenant's to write; this is the cluster operator's to pull.",
    )
    interval_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often the update loop looks at the pods of policies with an update "
        "mode: a resize is one small request, so a rollout follows within seconds; the pass "
        "reads the in-memory pod index, never the API.",
    )
    deferred_grace_seconds: float = Field(
        default=300.0,
        ge=0,
        description="How long a resize the kubelet Deferred may wait for room on its node "
        "before InPlaceOrRecreate evicts the pod instead: long enough for another pod to "
        "finish or shrink, short enough that a policy does not stay half-applied.",
    )
    retry_max_seconds: float = Field(
        default=300.0,
        gt=0,
        description="A resize the API server refused or failed is retried with backoff "
        "doubling from updates.interval_seconds up to this.",
    )
    evictions_per_minute: int = Field(
        default=20,
        ge=1,
        description="Cluster-wide cap on evictions (update Recreate, InPlaceOrRecreate) in any "
        "60 s: every policy changed at once (a GitOps sync) still recreates at most 20 pods a "
        "minute, which schedulers, image pulls and the webhook absorb; 1,000 pods take under "
        "an hour.",
    )
    evictions_per_minute_per_policy: int = Field(
        default=5,
        ge=1,
        description="Cap on evictions one policy causes in any 60 s: what a mistaken or hostile "
        "policy can do to its namespace is bounded (300 pods an hour at most) while a "
        "policy over several workloads still proceeds on each; within a workload one pod is "
        "in flight at a time anyway.",
    )


class LeaderSettings(_Section):
    """Leader election between replicas (docs/ha.md): a ``coordination.k8s.io`` Lease.

    Every replica serves admission and the HTTP API; only the Lease's holder reconciles
    (captures, risk, status, updates, retention, certificate rotation's writes aside). The
    timings are client-go's leaderelection defaults, which kube-controller-manager and
    controller-runtime use: a leader dead without releasing is replaced within
    ``lease_duration_seconds`` + ``retry_period_seconds``.
    """

    election: bool = Field(
        default=False,
        description="Hold a Lease and reconcile only while holding it. Off: one replica, "
        "which reconciles at once (local runs, the single-replica chart). On: required "
        "with more than one replica.",
    )
    lease_name: str = Field(
        default="memwarden",
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="The Lease's name, in the operator's namespace (``kubectl get lease -n "
        "<namespace>`` shows the holder).",
    )
    lease_duration_seconds: float = Field(
        default=15.0,
        gt=0,
        description="How long followers wait after the holder's last renewal before taking "
        "the Lease over (client-go's default): longer than a renewal hiccup, short enough "
        "that captures and timers pause for seconds, not minutes, when a leader dies.",
    )
    renew_deadline_seconds: float = Field(
        default=10.0,
        gt=0,
        description="A leader that has not renewed for this long stops leading (and exits, "
        "to be restarted) before its Lease can expire: below the lease duration, so it has "
        "stopped before anyone else may start.",
    )
    retry_period_seconds: float = Field(
        default=2.0,
        gt=0,
        description="How often the holder renews and followers try to acquire: a few "
        "requests per replica per lease duration.",
    )
    identity: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="This replica's name in the Lease's holderIdentity. None: the pod's "
        "name (``POD_NAME``, from the downward API), else hostname-pid.",
    )

    @model_validator(mode="after")
    def _timings_nest(self) -> LeaderSettings:
        if self.renew_deadline_seconds >= self.lease_duration_seconds:
            raise ValueError(
                "leader.renew_deadline_seconds must be below leader.lease_duration_seconds: "
                "a leader must stop before its Lease can expire"
            )
        if self.retry_period_seconds >= self.renew_deadline_seconds:
            raise ValueError(
                "leader.retry_period_seconds must be below leader.renew_deadline_seconds: "
                "a leader must get at least one renewal attempt before its deadline"
            )
        return self


#: Flat environment names that are not ``<section>_<field>`` (kept from earlier releases).
FLAT_NAMES = {
    ("admission", "background_nice"): "BACKGROUND_NICE",
    ("http", "alertmanager_token_file"): "ALERTMANAGER_TOKEN_FILE",
    ("risk", "prometheus_url"): "PROMETHEUS_URL",
    ("risk", "prometheus_timeout_seconds"): "PROMETHEUS_TIMEOUT_SECONDS",
    ("capture", "max_concurrent"): "MAX_CONCURRENT_CAPTURES",
    ("updates", "enabled"): "UPDATES_ENABLED",
}


class Settings(BaseSettings):
    """Everything the operator needs to know at start, by section."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
    )

    namespace: str = Field(
        default="memwarden-system",
        description="The operator's own namespace: never mutated, holds its Secrets.",
    )
    excluded_namespaces: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("kube-system",),
        description="Never governed, besides the operator's own namespace: the webhook "
        "configuration excludes them too, so pod creation there never waits on memwarden.",
    )
    dry_run: bool = Field(
        default=False, description="Compute and log, never write to the cluster (like --dry-run)."
    )

    kubelet: KubeletSettings = Field(default_factory=KubeletSettings)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    status: StatusSettings = Field(default_factory=StatusSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    risk: RiskSettings = Field(default_factory=RiskSettings)
    capture: CaptureSettings = Field(default_factory=CaptureSettings)
    evidence: EvidenceSettings = Field(default_factory=EvidenceSettings)
    updates: UpdateSettings = Field(default_factory=UpdateSettings)
    leader: LeaderSettings = Field(default_factory=LeaderSettings)

    _excluded_namespaces = field_validator("excluded_namespaces", mode="before")(_split_commas)

    @property
    def never_governed(self) -> frozenset[str]:
        return frozenset((*self.excluded_namespaces, self.namespace))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the nested environment names, then the flat ones; no .env file."""
        return (
            init_settings,
            _NestedEnvironment(settings_cls, os.environ),
            _FlatEnvironment(settings_cls, os.environ),
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build from ``MEMWARDEN_*`` variables (``os.environ`` unless a mapping is given)."""
        env = os.environ if environ is None else environ
        flat = _FlatEnvironment(cls, env)()
        nested = _NestedEnvironment(cls, env)()
        return cls.model_validate(_merge(flat, nested))

    def for_log(self) -> str:
        """One line with every setting, for the single start-up log record; credentials
        embedded in URLs (``https://user:secret@host``) are redacted."""
        return re.sub(r"(://)[^/@\s\"]+@", r"\1***@", self.model_dump_json())


def sections() -> Iterator[tuple[str, type[BaseModel]]]:
    """The settings' sections (``webhook``, ``kubelet``...) and their models."""
    for name, field in Settings.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield name, field.annotation


def flat_env_name(section: str | None, field: str) -> str:
    """The flat environment name of a setting: ``MEMWARDEN_WEBHOOK_PORT`` for
    ``webhook.port``, ``MEMWARDEN_NAMESPACE`` for a top-level one (``FLAT_NAMES`` lists
    the exceptions kept from earlier releases)."""
    if section is None:
        return ENV_PREFIX + field.upper()
    name = FLAT_NAMES.get((section, field), f"{section}_{field}".upper())
    if section == "updates" and (section, field) not in FLAT_NAMES:
        name = f"UPDATE_{field}".upper()
    return ENV_PREFIX + name


def nested_env_name(section: str | None, field: str) -> str:
    """The nested environment name of a setting: ``MEMWARDEN_WEBHOOK__PORT``."""
    if section is None:
        return ENV_PREFIX + field.upper()
    return f"{ENV_PREFIX}{section.upper()}{NESTED_DELIMITER}{field.upper()}"


def setting_names() -> Iterator[tuple[str | None, str, FieldInfo]]:
    """Every setting as (section or None, field, its FieldInfo), sections' fields included."""
    section_names = dict(sections())
    for name, field in Settings.model_fields.items():
        if name not in section_names:
            yield None, name, field
    for section, model in section_names.items():
        for name, field in model.model_fields.items():
            yield section, name, field


def _merge(low: dict[str, Any], high: dict[str, Any]) -> dict[str, Any]:
    """``high`` over ``low``, section by section."""
    merged = dict(low)
    for key, value in high.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


class _NestedEnvironment(EnvSettingsSource):
    """pydantic-settings' own environment source (``MEMWARDEN_WEBHOOK__PORT``), reading a
    given mapping so that ``Settings.from_env`` can be handed one (the chart test does)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


class _FlatEnvironment(PydanticBaseSettingsSource):
    """The flat names (``MEMWARDEN_WEBHOOK_PORT``), as a nested dict of raw strings."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self._environ = {key.upper(): value for key, value in environ.items()}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every field at once

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for section, name, _field in setting_names():
            value = self._environ.get(flat_env_name(section, name))
            if value is None:
                continue
            if section is None:
                values[name] = value
            else:
                values.setdefault(section, {})[name] = value
        return values
