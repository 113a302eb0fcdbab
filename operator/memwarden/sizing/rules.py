"""Policy rules: a memory intent solved into request/limit, and the Go runtime's settings."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction

from memwarden.quantity import format_go_bytes, readable_bytes
from memwarden.sizing.cgroup import CgroupValues, _memory_high
from memwarden.sizing.constants import (
    GOMEMLIMIT_MIB_FLOOR_FROM,
    HEADROOM_FRACTION,
    HEADROOM_MIN,
    MIB,
)
from memwarden.sizing.profile import KubeletProfile

# --------------------------------------------------------------------------- policy rules


@dataclass(frozen=True)
class MemoryRule:
    """A policy's memory section: plain ``request``/``limit``, or cgroup intent.

    Intent: ``protect`` (memory.min or memory.low), ``high`` (memory.high), ``max``
    (memory.max); any two solve the third. All fields empty: leave memory untouched.
    """

    request: int | None = None
    limit: int | None = None
    protect: int | None = None
    high: int | None = None
    max: int | None = None

    def __post_init__(self) -> None:
        values = {
            "request": self.request,
            "limit": self.limit,
            "protect": self.protect,
            "high": self.high,
            "max": self.max,
        }
        for name, value in values.items():
            if value is not None and value <= 0:
                raise ValueError(f"memory.{name}: must be positive, got {value}")
        if self.is_plain and self.is_intent:
            raise ValueError("memory: give either request/limit or protect/high/max, not both")

    @property
    def is_plain(self) -> bool:
        return self.request is not None or self.limit is not None

    @property
    def is_intent(self) -> bool:
        return self.protect is not None or self.high is not None or self.max is not None

    @property
    def is_empty(self) -> bool:
        return not self.is_plain and not self.is_intent


@dataclass(frozen=True)
class ResolvedMemory:
    """A memory rule turned into a container's request and limit (None: unset).

    ``infeasible`` is a reason naming the field when no request/limit can give what the
    rule asks of this kubelet; request and limit are then None.
    """

    request: int | None
    limit: int | None
    infeasible: str | None = None
    notes: tuple[str, ...] = ()


def _refuse(reason: str) -> ResolvedMemory:
    return ResolvedMemory(request=None, limit=None, infeasible=reason)


def resolve_rule(rule: MemoryRule, profile: KubeletProfile) -> ResolvedMemory:
    """Turn a memory rule into request and limit for this kubelet (KEP-2570).

    Guarantee when ``high`` is given and the result is feasible: the kubelet's memory.high
    (:func:`expected_cgroup`) is ``floor(high / page) × page`` — never above the asked
    high, below it by less than one page. Of the limits (protect+high) or requests
    (high+max) that give it, the roundest is chosen; protect+high+max is accepted only when
    the three already agree that way. An empty rule resolves to (None, None): keep the pod's.
    """
    if rule.is_empty:
        return ResolvedMemory(request=None, limit=None)
    if rule.is_plain:
        return _resolve_plain(rule)
    return _resolve_intent(rule, profile)


def _resolve_plain(rule: MemoryRule) -> ResolvedMemory:
    if rule.request is not None and rule.limit is not None and rule.request > rule.limit:
        return _refuse(
            f"memory.request: request {readable_bytes(rule.request)} is above"
            f" limit {readable_bytes(rule.limit)}"
        )
    if rule.request is None:
        return ResolvedMemory(
            request=rule.limit,
            limit=rule.limit,
            notes=("memory.request: unset, so it takes the limit (as the API defaults it)",),
        )
    return ResolvedMemory(request=rule.request, limit=rule.limit)


def _resolve_intent(rule: MemoryRule, profile: KubeletProfile) -> ResolvedMemory:
    protect, high, max_ = rule.protect, rule.high, rule.max
    if high is not None and protect is None and max_ is None:
        return _refuse(
            "memory.high: high needs protect or max: the kubelet derives memory.high"
            " from the request and the limit"
        )
    problems = []
    why_no_protection = profile.no_protection_reason()
    if protect is not None and why_no_protection:
        problems.append(
            f"memory.protect: the kubelet writes no memory.min/memory.low: {why_no_protection}"
        )
    why_no_high = profile.no_high_reason()
    if high is not None and why_no_high:
        problems.append(f"memory.high: the kubelet writes no memory.high: {why_no_high}")
    if problems:
        return _refuse("; ".join(problems))
    if protect is not None and max_ is not None and protect > max_:
        return _refuse(
            f"memory.protect: protect {readable_bytes(protect)} is above max {readable_bytes(max_)}"
        )

    if high is None:
        if max_ is None:
            assert protect is not None
            return ResolvedMemory(
                request=protect,
                limit=None,
                notes=("memory: protect alone sets the request and no limit (memory.max: max)",),
            )
        if protect is None:
            return ResolvedMemory(
                request=max_,
                limit=max_,
                notes=(
                    "memory: max alone sets the limit; the request takes it (request == limit)",
                ),
            )
        return ResolvedMemory(request=protect, limit=max_)

    factor = profile.factor
    assert factor is not None  # no_high_reason() ruled out an unset factor
    if protect is not None and max_ is not None:
        resolved = _check_triple(protect=protect, high=high, max_=max_, profile=profile)
    elif protect is not None:
        resolved = _solve_limit(protect=protect, high=high, factor=factor, page=profile.page_size)
    else:
        assert max_ is not None
        resolved = _solve_request(high=high, max_=max_, factor=factor, page=profile.page_size)
    if resolved.infeasible is not None:
        return resolved
    return _confirm_high(resolved, high=high, profile=profile)


def _check_triple(*, protect: int, high: int, max_: int, profile: KubeletProfile) -> ResolvedMemory:
    """protect + high + max: the kubelet already decides memory.high; it must match."""
    if protect == max_:
        return _refuse(
            f"memory.high: protect == max ({readable_bytes(max_)}) makes request == limit, and the"
            " kubelet writes no memory.high when request == limit (Guaranteed-style memory)"
        )
    got = _memory_high(request=protect, limit=max_, profile=profile)
    page = profile.page_size
    if got is None or not high - page < got <= high:
        gives = "no memory.high" if got is None else f"memory.high {readable_bytes(got)}"
        return _refuse(
            f"memory.high: protect {readable_bytes(protect)} and max {readable_bytes(max_)}"
            f" give {gives}"
            f" (memoryThrottlingFactor {profile.throttling_factor:g}), but high asks"
            f" {readable_bytes(high)}; they must agree to within one page below high:"
            " give two of the three and memwarden solves the third"
        )
    return ResolvedMemory(request=protect, limit=max_)


def _roundest(low: int, high: int) -> int:
    """The value in [low, high] with the most trailing zero bits: ``2Gi``, not ``2147488198``."""
    step = 1 << high.bit_length()
    while step > 1 and high // step * step < low:
        step >>= 1
    return high // step * step


def _solve_limit(*, protect: int, high: int, factor: Fraction, page: int) -> ResolvedMemory:
    """protect + high: a limit whose memory.high is floor(high / page) × page.

    Every limit in a range of about page / factor bytes gives that memory.high; take the
    roundest, so the pod spec reads ``2Gi`` rather than a byte count.
    """
    target = high // page * page
    if target <= protect:
        return _refuse(
            f"memory.high: high {readable_bytes(high)} must be at least one page"
            f" ({page} bytes) above protect {readable_bytes(protect)}: the kubelet writes"
            " memory.high only above the request, in whole pages"
        )
    # floor((p + f·(l − p)) / page) == target / page  ⇔  target ≤ p + f·(l − p) < target + page
    lowest = math.ceil(protect + (target - protect) / factor)
    highest = math.ceil(protect + (target + page - protect) / factor) - 1
    return ResolvedMemory(request=protect, limit=_roundest(lowest, highest))


def _solve_request(*, high: int, max_: int, factor: Fraction, page: int) -> ResolvedMemory:
    """high + max: a request whose memory.high is floor(high / page) × page (the roundest)."""
    if factor == 1:
        return _refuse(
            "memory.high: with memoryThrottlingFactor 1 memory.high is max rounded down to"
            " a page whatever the request, so high cannot choose it; give protect and max"
        )
    if high >= max_:
        return _refuse(
            f"memory.high: high {readable_bytes(high)} must be below max {readable_bytes(max_)}:"
            " the kubelet puts memory.high between the request and the limit"
        )
    target = high // page * page
    # floor((r + f·(m − r)) / page) == target / page  ⇔  target ≤ r + f·(m − r) < target + page;
    # and memory.high is written only above the request: r < target.
    lowest = max(1, math.ceil((target - factor * max_) / (1 - factor)))
    highest = min(math.ceil((target + page - factor * max_) / (1 - factor)) - 1, target - 1)
    if highest <= 0 and target == 0:
        return _refuse(
            f"memory.high: high {readable_bytes(high)} is below one page ({page} bytes):"
            " the kubelet writes memory.high in whole pages above the request"
        )
    if highest <= 0:
        return _refuse(
            f"memory.high: high must be ≥ factor × max = {readable_bytes(math.ceil(factor * max_))}"
            f" (memoryThrottlingFactor {float(factor):g}, max {readable_bytes(max_)}), got"
            f" {readable_bytes(high)}: any positive request gives a higher memory.high"
        )
    if lowest > highest:
        return _refuse(_too_close(high=high, max_=max_))
    return ResolvedMemory(request=_roundest(lowest, highest), limit=max_)


def _too_close(*, high: int, max_: int) -> str:
    return (
        f"memory.high: no request below max {readable_bytes(max_)} gives a memory.high within one"
        f" page below {readable_bytes(high)}: high is too close to max"
    )


def _confirm_high(
    resolved: ResolvedMemory, *, high: int, profile: KubeletProfile
) -> ResolvedMemory:
    """Check a solved intent with the kubelet model itself, and note the achieved high."""
    assert resolved.request is not None
    assert resolved.limit is not None
    got = _memory_high(request=resolved.request, limit=resolved.limit, profile=profile)
    page = profile.page_size
    if got is None or not high - page < got <= high:
        return _refuse(_too_close(high=high, max_=resolved.limit))
    notes = resolved.notes
    if got != high:
        notes += (
            f"memory.high: {readable_bytes(got)}, {high - got} bytes below the asked"
            f" {readable_bytes(high)}:"
            f" the kubelet rounds memory.high down to whole pages of {page} bytes",
        )
    return replace(resolved, notes=notes)


@dataclass(frozen=True)
class GoRuntimeRule:
    """A policy's Go runtime section: GOMEMLIMIT (percent or bytes) and GOGC."""

    memory_limit_percent: float | None = None
    """Percent of memory.high when the kubelet writes it, else of memory.max."""
    memory_limit_bytes: int | None = None
    gogc: str | None = None
    """``off`` or a non-negative integer, passed through unchanged."""

    def __post_init__(self) -> None:
        percent = self.memory_limit_percent
        if percent is not None and self.memory_limit_bytes is not None:
            raise ValueError("runtime.go.memoryLimit: a percentage or a quantity, not both")
        if percent is not None and (isinstance(percent, bool) or not 0 < percent <= 100):
            raise ValueError(f"runtime.go.memoryLimit: percent must be in (0, 100], got {percent}")
        if self.memory_limit_bytes is not None and self.memory_limit_bytes <= 0:
            raise ValueError(
                f"runtime.go.memoryLimit: must be positive, got {self.memory_limit_bytes}"
            )
        if self.gogc is not None and self.gogc != "off" and not self.gogc.isdigit():
            raise ValueError(f'runtime.go.gogc: "off" or a non-negative integer, got {self.gogc!r}')


@dataclass(frozen=True)
class _GoSettings:
    gomemlimit: int | None
    infeasible: str | None
    notes: tuple[str, ...]


def _go_settings(
    *, runtime: GoRuntimeRule, cgroup: CgroupValues, high_from_node: bool
) -> _GoSettings:
    """GOMEMLIMIT for one container's cgroup values, with the notes that explain it."""
    notes: list[str] = []
    value: int | None = None
    field = "runtime.go.memoryLimit"
    memory_max, memory_high = cgroup.memory_max, cgroup.memory_high
    if runtime.memory_limit_bytes is not None:
        value = runtime.memory_limit_bytes
        if memory_max is not None and value > memory_max:
            return _GoSettings(
                gomemlimit=None,
                infeasible=(
                    f"{field}: GOMEMLIMIT {format_go_bytes(value)} is above memory.max"
                    f" {readable_bytes(memory_max)}: the OOM killer would act before the Go GC"
                ),
                notes=(),
            )
        if memory_high is not None and value > memory_high:
            notes.append(
                f"{field}: GOMEMLIMIT {format_go_bytes(value)} is above memory.high"
                f" {readable_bytes(memory_high)}: the kernel throttles before the Go GC reacts"
            )
    elif runtime.memory_limit_percent is not None:
        percent = runtime.memory_limit_percent
        base, base_name = (
            (memory_high, "memory.high") if memory_high is not None else (memory_max, "memory.max")
        )
        if base is None:
            notes.append(
                f"{field}: GOMEMLIMIT not set: no memory.high and no memory.max to take"
                f" {percent:g}% of"
            )
        else:
            value = math.floor(base * Fraction(str(percent)) / 100)
            if value >= GOMEMLIMIT_MIB_FLOOR_FROM:
                value = value // MIB * MIB
            if value <= 0:
                return _GoSettings(
                    gomemlimit=None,
                    infeasible=(
                        f"{field}: {percent:g}% of {base_name} {readable_bytes(base)} is 0 bytes"
                    ),
                    notes=(),
                )
            notes.append(
                f"{field}: GOMEMLIMIT {format_go_bytes(value)} = {percent:g}% of"
                f" {base_name} {readable_bytes(base)}"
            )
            if base_name == "memory.high" and high_from_node:
                notes.append(
                    f"{field}: memory.high comes from the node's allocatable memory (no limit),"
                    " so GOMEMLIMIT is right only on nodes of that size"
                )
    if value is not None and memory_max is not None:
        wanted = max(math.ceil(memory_max * HEADROOM_FRACTION), HEADROOM_MIN)
        if memory_max - value < wanted:
            notes.append(
                f"{field}: GOMEMLIMIT {format_go_bytes(value)} leaves"
                f" {readable_bytes(memory_max - value)} below memory.max"
                f" {readable_bytes(memory_max)}, less than"
                f" {readable_bytes(wanted)} (5% or 32Mi): little room for memory Go does not count"
                " (cgo, page cache), and near the limit the GC runs nonstop (capped at ~50%"
                " CPU): a slow death spiral instead of an OOM kill"
            )
    if runtime.gogc == "off" and value is None:
        notes.append(
            "runtime.go.gogc: GOGC=off without GOMEMLIMIT: the heap grows until the OOM killer"
        )
    return _GoSettings(gomemlimit=value, infeasible=None, notes=tuple(notes))
