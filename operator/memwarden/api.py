"""The memwarden API: pydantic models of the custom resources.

Pure: no Kubernetes client, no network. The models are the single source of truth; the
CRDs are generated from them (:mod:`memwarden.crdgen`, ``memwarden crds``; the YAML under
``crds/``) and a test fails when
the two drift apart. Rules that a structural schema cannot express are CEL
``x-kubernetes-validations`` attached to the models, so ``kubectl apply`` refuses an
invalid policy with the field named, before memwarden ever sees it.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from memwarden.artifacts import ALL_ARTIFACTS, Artifact
from memwarden.quantity import (
    DURATION_PATTERN,
    QUANTITY_PATTERN,
    QuantityError,
    parse_bytes,
    parse_duration,
)

GROUP = "memwarden.dev"
VERSION = "v1alpha1"
API_VERSION: Final = "memwarden.dev/v1alpha1"
ANNOTATION_PREFIX = f"{GROUP}/"
APPLIED_ANNOTATION = f"{GROUP}/applied"

#: A non-negative Kubernetes memory quantity (``512Mi``, ``1Gi``, ``1e9``): the API
#: server checks the grammar (pattern) and CEL's ``isQuantity`` the value.
MEMORY_QUANTITY_PATTERN = QUANTITY_PATTERN.replace("[+-]?", "")
#: ``90%`` (of memory.high when the kubelet throttles, else of the limit) or a quantity.
GO_MEMORY_LIMIT_PATTERN = r"^([0-9]+(\.[0-9]+)?%|" + MEMORY_QUANTITY_PATTERN.strip("^$") + ")$"


def _cel(rule: str, message: str, *, field_path: str | None = None) -> dict[str, Any]:
    """One ``x-kubernetes-validations`` entry; ``field_path`` names the offending field."""
    entry: dict[str, Any] = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


#: CEL for a ``90%``-or-quantity string: a percentage is in (0, 100].
_PERCENT_IN_RANGE = _cel(
    "!self.endsWith('%') || (double(self.substring(0, self.size() - 1)) > 0.0 "
    "&& double(self.substring(0, self.size() - 1)) <= 100.0)",
    "a percentage must be above 0% and at most 100%",
)


def _check_percent(value: str | None) -> None:
    """Mirror of ``_PERCENT_IN_RANGE`` for offline use."""
    if value is not None and value.endswith("%") and not 0 < float(value[:-1]) <= 100:
        raise ValueError("a percentage must be above 0% and at most 100%")


def _quantity_le(a: str, b: str) -> str:
    """CEL: quantity field ``a`` <= ``b`` when both are set and valid (else other rules speak)."""
    return (
        f"!has(self.{a}) || !has(self.{b}) || !isQuantity(self.{a}) || !isQuantity(self.{b}) "
        f"|| quantity(self.{a}).compareTo(quantity(self.{b})) <= 0"
    )


def _quantity_lt(a: str, b: str) -> str:
    return (
        f"!has(self.{a}) || !has(self.{b}) || !isQuantity(self.{a}) || !isQuantity(self.{b}) "
        f"|| quantity(self.{a}).compareTo(quantity(self.{b})) < 0"
    )


def _quantity_field(description: str) -> Any:
    return Field(
        default=None,
        description=description,
        pattern=MEMORY_QUANTITY_PATTERN,
        max_length=64,
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel("isQuantity(self)", "must be a Kubernetes quantity such as 512Mi or 1Gi")
            ]
        },
    )


ContainerName = Annotated[str, StringConstraints(min_length=1, max_length=63)]


class _Model(BaseModel):
    """Base: camelCase fields as in Kubernetes, unknown fields rejected, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --- MemoryPolicy -------------------------------------------------------------------


class LabelSelectorRequirement(_Model):
    key: str = Field(max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = Field(default=None, max_length=64)


class LabelSelector(_Model):
    """A standard Kubernetes label selector; ``{}`` selects every pod of the namespace."""

    matchLabels: dict[str, str] | None = None
    matchExpressions: list[LabelSelectorRequirement] | None = Field(default=None, max_length=32)


class MemorySpec(_Model):
    """Either plain resources (request/limit) or cgroup intent (protect/high/max).

    Intent: give two of the three and memwarden solves the third under the cluster's
    kubelet MemoryQoS profile; ``protect`` alone sets only a request (Burstable, no
    limit); ``max`` alone sets the limit and, as the API server does, request = limit;
    ``high`` needs ``protect`` or ``max``. All three are accepted only when consistent.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!((has(self.request) || has(self.limit)) && "
                    "(has(self.protect) || has(self.high) || has(self.max)))",
                    "use either plain resources (request/limit) or cgroup intent "
                    "(protect/high/max), not both",
                ),
                _cel(
                    "has(self.request) || has(self.limit) || has(self.protect) || "
                    "has(self.high) || has(self.max)",
                    "set request/limit or at least one of protect/high/max",
                ),
                _cel(
                    "!has(self.high) || has(self.protect) || has(self.max)",
                    "high needs protect or max: the throttling point is derived from them",
                    field_path=".high",
                ),
                _cel(
                    _quantity_le("request", "limit"),
                    "request must not exceed limit",
                    field_path=".request",
                ),
                _cel(
                    _quantity_lt("protect", "high"),
                    "protect must be below high (memory.high is written only above the request)",
                    field_path=".protect",
                ),
                _cel(_quantity_le("high", "max"), "high must not exceed max", field_path=".high"),
                _cel(
                    _quantity_le("protect", "max"),
                    "protect must not exceed max",
                    field_path=".protect",
                ),
            ]
        }
    )

    request: str | None = _quantity_field("Memory request of each governed container.")
    limit: str | None = _quantity_field("Memory limit of each governed container.")
    protect: str | None = _quantity_field(
        "Memory to protect from reclaim: memory.min (Guaranteed) or memory.low (Burstable)."
    )
    high: str | None = _quantity_field("memory.high: the point where the kernel throttles.")
    max: str | None = _quantity_field("memory.max: the hard limit (the container's limit).")

    @model_validator(mode="after")
    def _cross_field_rules(self) -> MemorySpec:
        """The CRD's CEL rules, again, for offline use (``memwarden explain`` in CI).

        A test applies every invalid case to the real API server too, so the two agree.
        """
        values: dict[str, int] = {}
        for name in ("request", "limit", "protect", "high", "max"):
            text = getattr(self, name)
            if text is not None:
                try:
                    values[name] = parse_bytes(text)
                except QuantityError as exc:
                    raise ValueError(f"memory.{name}: {exc}") from exc
        plain = {"request", "limit"} & values.keys()
        intent = {"protect", "high", "max"} & values.keys()
        if plain and intent:
            raise ValueError(
                "memory: use either plain resources (request/limit) or cgroup "
                "intent (protect/high/max), not both"
            )
        if not values:
            raise ValueError("memory: set request/limit or at least one of protect/high/max")
        if "high" in values and not ({"protect", "max"} & values.keys()):
            raise ValueError("memory.high: high needs protect or max")
        ordered = (
            ("request", "limit", "request must not exceed limit", False),
            ("protect", "high", "protect must be below high", True),
            ("high", "max", "high must not exceed max", False),
            ("protect", "max", "protect must not exceed max", False),
        )
        for low, high, message, strict in ordered:
            if (
                low in values
                and high in values
                and (values[low] >= values[high] if strict else values[low] > values[high])
            ):
                raise ValueError(f"memory.{low}: {message}")
        return self


class GoRuntimeSpec(_Model):
    """Go runtime settings injected as environment variables."""

    memoryLimit: str | None = Field(
        default=None,
        description=(
            "GOMEMLIMIT: a percentage of memory.high when the kubelet writes it, else of the "
            "memory limit (e.g. 90%), or an absolute quantity (e.g. 900Mi)."
        ),
        pattern=GO_MEMORY_LIMIT_PATTERN,
        max_length=64,
        json_schema_extra={
            "x-kubernetes-validations": [
                _PERCENT_IN_RANGE,
            ]
        },
    )
    gogc: str | None = Field(
        default=None,
        description='GOGC: an integer percentage or "off".',
        pattern=r"^(off|[0-9]{1,6})$",
        max_length=6,
    )

    @field_validator("memoryLimit")
    @classmethod
    def _percent_in_range(cls, value: str | None) -> str | None:
        """Mirror of the CEL rule: a percentage is in (0, 100]."""
        _check_percent(value)
        return value

    overrideExisting: bool = Field(
        default=False,
        description="Replace GOMEMLIMIT/GOGC the container already sets (value or valueFrom).",
    )


def _positive_quantity_field(description: str) -> Any:
    """A quantity above zero (a size flag of 0 means something else to the runtimes)."""
    return Field(
        default=None,
        description=description,
        pattern=MEMORY_QUANTITY_PATTERN,
        max_length=64,
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))",
                    "must be a Kubernetes quantity above 0, such as 64Mi or 1Gi",
                )
            ]
        },
    )


def _positive_bytes(field: str, value: str | None) -> None:
    """Mirror of the CEL rule of ``_positive_quantity_field``."""
    if value is not None and parse_bytes(value) <= 0:
        raise ValueError(f"{field}: must be a Kubernetes quantity above 0")


class JvmRuntimeSpec(_Model):
    """JVM memory flags merged into JAVA_TOOL_OPTIONS (docs/sizing.md#jvm)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!(has(self.maxRAMPercentage) && has(self.maxHeap))",
                    "set maxRAMPercentage or maxHeap, not both",
                    field_path=".maxHeap",
                ),
            ]
        }
    )

    maxRAMPercentage: float | None = Field(
        default=None,
        gt=0,
        le=100,
        description="The heap as a percentage of memory.high when the kubelet writes it, "
        "else of the memory limit (-XX:MaxRAMPercentage, scaled to memory.max, which is "
        "what the JVM reads).",
    )
    maxHeap: str | None = _positive_quantity_field("The heap as a quantity (-Xmx).")
    maxMetaspace: str | None = _positive_quantity_field("-XX:MaxMetaspaceSize.")
    maxDirectMemory: str | None = _positive_quantity_field("-XX:MaxDirectMemorySize.")
    overrideExisting: bool = Field(
        default=False,
        description="Replace the container's own flags for the settings memwarden makes "
        "(its other JAVA_TOOL_OPTIONS flags are always kept).",
    )

    @model_validator(mode="after")
    def _rules(self) -> JvmRuntimeSpec:
        """The CRD's CEL rules, again, for offline use (``memwarden explain``)."""
        if self.maxRAMPercentage is not None and self.maxHeap is not None:
            raise ValueError("runtime.jvm.maxHeap: set maxRAMPercentage or maxHeap, not both")
        for name in ("maxHeap", "maxMetaspace", "maxDirectMemory"):
            _positive_bytes(f"runtime.jvm.{name}", getattr(self, name))
        return self


class NodeRuntimeSpec(_Model):
    """Node.js (V8) memory flags merged into NODE_OPTIONS (docs/sizing.md#nodejs)."""

    maxOldSpaceSize: str | None = Field(
        default=None,
        description="--max-old-space-size: a percentage of memory.high when the kubelet "
        "writes it, else of the memory limit (e.g. 75%), or a quantity (at least 1Mi); "
        "rounded down to whole MiB.",
        pattern=GO_MEMORY_LIMIT_PATTERN,
        max_length=64,
        json_schema_extra={
            "x-kubernetes-validations": [
                _PERCENT_IN_RANGE,
                _cel(
                    "self.endsWith('%') || !isQuantity(self) || "
                    "quantity(self).compareTo(quantity('1Mi')) >= 0",
                    "a quantity must be at least 1Mi (the flag is in MiB)",
                ),
            ]
        },
    )
    overrideExisting: bool = Field(
        default=False,
        description="Replace the container's own --max-old-space-size (its other "
        "NODE_OPTIONS flags are always kept).",
    )

    @field_validator("maxOldSpaceSize")
    @classmethod
    def _in_range(cls, value: str | None) -> str | None:
        """Mirror of the CEL rules."""
        _check_percent(value)
        if value is not None and not value.endswith("%") and parse_bytes(value) < 2**20:
            raise ValueError("a quantity must be at least 1Mi (the flag is in MiB)")
        return value


class RuntimeSpec(_Model):
    go: GoRuntimeSpec | None = None
    jvm: JvmRuntimeSpec | None = None
    node: NodeRuntimeSpec | None = None


def _duration_field(default: str, description: str) -> Any:
    return Field(default=default, description=description, pattern=DURATION_PATTERN, max_length=32)


class OomRiskSpec(_Model):
    """When a governed container counts as heading for the OOM killer.

    Each signal is evaluated by Prometheus over ``for`` (so an operator restart loses no
    state); any one holding opens an incident. usageRatio (0.9) and timeToLimit (10m) are
    on by default: set them to 0 / "0s" to turn them off. The others are off unless set.
    Alertmanager pushes open incidents only for policies with ``alerts: true``.
    """

    usageRatio: float | None = Field(
        default=0.9,
        ge=0,
        le=1,
        description="Working set / memory limit at or above this (default 0.9; 0 = off).",
    )
    timeToLimit: str | None = Field(
        default="10m",
        pattern=DURATION_PATTERN,
        max_length=32,
        description="The working set, extrapolated linearly, reaches the limit within this "
        '(default 10m; "0s" = off).',
    )
    majorFaultsPerSecond: float | None = Field(
        default=None,
        gt=0,
        description="Major page faults per second at or above this (off by default).",
    )
    pressureRatio: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="PSI memory 'some' stall ratio (waiting seconds per second) at or above "
        "this (off by default).",
    )
    gcCPURatio: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Go GC death spiral: the share of CPU the Go GC takes (rate of "
        "go_cpu_classes_gc_total_cpu_seconds_total / go_cpu_classes_total_cpu_seconds_total) "
        "at or above this while the heap goal is at 85% of GOMEMLIMIT or more (off by "
        "default; needs the workload's Go runtime metrics scraped with namespace, pod and "
        "container labels).",
    )
    alerts: bool = Field(
        default=False,
        description="Accept Alertmanager pushes for the pods this policy governs: an alert "
        "naming such a pod (in its own namespace) may open an incident. Off by default, so "
        "an alert's labels cannot choose the pod whose memory is dumped.",
    )
    for_: str = Field(
        default="2m",
        alias="for",
        pattern=DURATION_PATTERN,
        max_length=32,
        description="How long a signal must hold before an incident opens (default 2m).",
    )

    @field_validator("usageRatio")
    @classmethod
    def _zero_ratio_is_off(cls, value: float | None) -> float | None:
        return None if value == 0 else value

    @field_validator("timeToLimit")
    @classmethod
    def _zero_duration_is_off(cls, value: str | None) -> str | None:
        return None if value is not None and parse_duration(value) == 0 else value


class CaptureSpec(_Model):
    """Evidence collection when an incident opens."""

    enabled: bool = Field(default=True, description="Open incidents and capture evidence.")
    artifacts: list[Artifact] = Field(
        default_factory=lambda: list(ALL_ARTIFACTS),
        max_length=7,
        description="What to collect; gcore is skipped when Pod Security forbids SYS_PTRACE.",
    )
    pprofPort: int = Field(
        default=6060, ge=1, le=65535, description="The target's net/http/pprof port."
    )
    traceSeconds: int = Field(default=5, ge=1, le=60, description="Length of the execution trace.")
    cooldown: str = _duration_field("30m", "No new incident for the same pod within this.")
    maxIncidentsPerHour: int = Field(
        default=10, ge=1, le=1000, description="Budget of incidents this policy may open per hour."
    )
    maxCoreBytes: str = Field(
        default="2Gi",
        pattern=MEMORY_QUANTITY_PATTERN,
        max_length=64,
        description="Skip gcore when the process RSS is above this. The core file is about "
        "the mapped address space (VmSize), mostly zeros that compress away in the bundle.",
    )


UpdateMode = Literal["Initial", "InPlace", "Recreate", "InPlaceOrRecreate"]
UpdateAction = Literal["Resize", "Evict", "Wait"]


class MemoryPolicySpec(_Model):
    """What a MemoryPolicy asks for. See docs/api.md for every field."""

    selector: LabelSelector = Field(
        description="Pods of this namespace to govern; {} selects all of them."
    )
    containers: list[ContainerName] | None = Field(
        default=None,
        description="Container names to govern; default: every regular container. "
        "Sidecars (init containers with restartPolicy Always) are governed only when named.",
        max_length=64,
    )
    priority: int = Field(
        default=0,
        ge=-1000,
        le=1000,
        description=(
            "When several policies select a pod the highest priority wins; ties go to the "
            "oldest policy, then the lexically smallest name (reported in status)."
        ),
    )
    mode: Literal["Enforce", "Audit"] = Field(
        default="Enforce",
        description="Enforce mutates pods at admission; Audit computes and reports only.",
    )
    update: UpdateMode = Field(
        default="Initial",
        description="How running pods reach the policy (docs/updates.md). Initial: only when "
        "a pod is created (admission); running pods are reported as drifted. InPlace: memory "
        "resized through pods/resize, never a QoS class change. Recreate: pods evicted "
        "(Eviction API, PodDisruptionBudgets hold) and admitted again with the policy. "
        "InPlaceOrRecreate: in place where possible, else evicted. With mode Audit nothing "
        "changes: status says what would.",
    )
    maxShrinkPercent: int = Field(
        default=50,
        ge=1,
        le=100,
        description="Safety rail of the update modes: one update lowers a container's memory "
        "request or limit by at most this percentage of its current value (a resize steps "
        "down in several updates; an eviction that would shrink more waits), and never "
        "below the working set Prometheus reports. 100 turns the percentage rule off.",
    )
    memory: MemorySpec | None = None
    runtime: RuntimeSpec | None = None
    oomRisk: OomRiskSpec | None = None
    capture: CaptureSpec | None = None


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(_Model):
    """A status condition as Kubernetes conventions have it (``metav1.Condition``)."""

    type: str
    status: ConditionStatus
    reason: str
    message: str = ""
    lastTransitionTime: str | None = None
    observedGeneration: int | None = None


class PodConflict(_Model):
    """A pod selected by several policies, and which one governs it."""

    pod: str
    winner: str
    others: list[str]
    reason: str


class PendingUpdate(_Model):
    """A pod the update mode has not brought to the policy yet, what comes next, and why."""

    pod: str
    action: UpdateAction = Field(
        description="Resize (in place), Evict (recreate), or Wait (nothing memwarden may do now)."
    )
    reason: str = Field(max_length=1024)


class MemoryPolicyStatus(_Model):
    observedGeneration: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    matchedPods: int = 0
    compliantPods: int = 0
    driftedPods: int = 0
    driftedPodNames: list[str] = Field(default_factory=list, max_length=20)
    updatedPods: int = Field(
        default=0,
        description="Pods whose memory memwarden resized in place to this policy after they "
        "started (a recreated pod is admitted with the policy and counts as compliant).",
    )
    pendingPods: int = Field(
        default=0, description="Pods the update mode has yet to resize or evict, or cannot."
    )
    pendingUpdates: list[PendingUpdate] = Field(default_factory=list, max_length=20)
    staleRuntimePods: int = Field(
        default=0,
        description="Pods whose memwarden-injected GOMEMLIMIT/GOGC or JVM/Node.js flags "
        "(JAVA_TOOL_OPTIONS, NODE_OPTIONS) no longer match the policy (env cannot change in "
        "place): they take the new values when recreated.",
    )
    staleRuntimePodNames: list[str] = Field(default_factory=list, max_length=20)
    conflicts: list[PodConflict] = Field(default_factory=list, max_length=20)
    lastIncident: str | None = None


class MemoryPolicy(_Model):
    apiVersion: Literal["memwarden.dev/v1alpha1"] = API_VERSION
    kind: Literal["MemoryPolicy"] = "MemoryPolicy"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: MemoryPolicySpec
    status: MemoryPolicyStatus | None = None


# --- MemoryIncident -----------------------------------------------------------------

TriggerSource = Literal["prometheus", "alertmanager", "oomkilled", "manual"]
IncidentPhase = Literal["Pending", "Capturing", "Collected", "Failed", "Skipped"]


class Trigger(_Model):
    """What opened the incident."""

    source: TriggerSource = "manual"
    signal: str | None = Field(
        default=None,
        max_length=128,
        description="usageRatio, timeToLimit, majorFaultsPerSecond, pressureRatio, gcCPURatio, "
        "oomKilled, or the alert name.",
    )
    value: float | None = Field(default=None, description="The observed value.")
    threshold: float | None = Field(default=None, description="The threshold it crossed.")
    alertName: str | None = Field(default=None, max_length=256)
    labels: dict[str, str] | None = Field(default=None, description="The alert's labels.")
    observedAt: str | None = Field(default=None, description="RFC 3339 time of the observation.")


class MemoryIncidentSpec(_Model):
    """One evidence capture from one container. Create one by hand for an on-demand capture."""

    pod: str = Field(min_length=1, max_length=253, description="The pod, in this namespace.")
    container: str | None = Field(
        default=None, max_length=63, description="Target container; default: the pod's first."
    )
    policy: str | None = Field(default=None, max_length=253, description="The governing policy.")
    trigger: Trigger = Field(default_factory=Trigger)
    artifacts: list[Artifact] | None = Field(
        default=None, max_length=7, description="Override the policy's capture.artifacts."
    )


class ArtifactRecord(_Model):
    name: str
    bytes: int = 0
    sha256: str | None = None
    durationSeconds: float | None = None
    error: str | None = None


class FunctionUsage(_Model):
    function: str
    flatBytes: int
    cumBytes: int


class Analysis(_Model):
    """What the heap profile says is eating memory."""

    sampleType: str = "inuse_space"
    totalBytes: int = 0
    top: list[FunctionUsage] = Field(default_factory=list, max_length=20)
    goroutines: int | None = None


class DebugIdentity(_Model):
    """Who the debug container runs as, and why (docs/capture.md)."""

    runAsUser: int | None = Field(default=None, description="Unset: the toolbox image's user.")
    runAsGroup: int | None = None
    capabilities: list[str] = Field(
        default_factory=list, max_length=64, description="Capabilities added."
    )
    reason: str = Field(default="", max_length=1024)


class MemoryIncidentStatus(_Model):
    phase: IncidentPhase = "Pending"
    reason: str | None = None
    message: str | None = None
    openedAt: str | None = None
    captureStartedAt: str | None = None
    completedAt: str | None = None
    ephemeralContainer: str | None = None
    debugIdentity: DebugIdentity | None = Field(
        default=None, description="The debug container's user and capabilities, and why."
    )
    artifacts: list[ArtifactRecord] = Field(default_factory=list, max_length=32)
    bundle: str | None = Field(default=None, description="Where the evidence bundle is stored.")
    bundleBytes: int | None = None
    bundleSha256: str | None = None
    analysis: Analysis | None = None
    analysisAttempts: int | None = Field(
        default=None,
        description="Analyses of the bundle started (recorded before each starts): after "
        "two that never finished, memwarden stops trying and says why.",
    )
    observedGeneration: int | None = Field(
        default=None, description="The incident's metadata.generation this status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=8,
        description="Complete (True once the incident ended: Collected, Failed or Skipped; "
        "kubectl wait --for=condition=Complete) and EvidenceCollected (True when Collected, "
        "False when Failed or Skipped, Unknown while it runs).",
    )


__all__ = [
    "API_VERSION",
    "APPLIED_ANNOTATION",
    "GROUP",
    "VERSION",
    "Condition",
    "GoRuntimeSpec",
    "JvmRuntimeSpec",
    "LabelSelector",
    "LabelSelectorRequirement",
    "MemoryPolicy",
    "MemoryPolicySpec",
    "MemoryPolicyStatus",
    "MemorySpec",
    "NodeRuntimeSpec",
    "PendingUpdate",
    "PodConflict",
    "RuntimeSpec",
    "UpdateAction",
    "UpdateMode",
]
