"""Heap and goroutine profile analysis: top functions, goroutine count, heap diff.

Pure: parsed :class:`~memwarden.capture.profile.Profile` in, frozen dataclasses out (each
with ``to_dict()`` for JSON and the ``MemoryIncident`` status). The numbers are those of
``go tool pprof -top`` at its default granularity (functions, inlined frames kept):

- **flat** of a function: the sum of the values of samples whose leaf frame is that
  function. The leaf is ``locations[0].lines[0]``: with inlining, a location holds
  several frames and the first is the innermost.
- **cum**: the sum of the values of samples in which the function appears anywhere in
  the stack, counted once per sample (recursion does not double count).

Functions are keyed by name, as pprof does, so two ``Function`` records with one name are
one row. The profile's ``drop_frames``/``keep_frames`` are not applied: the Go runtime
never sets them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from memwarden.capture.profile import Location, Profile, ProfileError, Sample

__all__ = [
    "AnalysisError",
    "FunctionDelta",
    "FunctionStat",
    "HeapDiff",
    "Summary",
    "TopReport",
    "diff_profiles",
    "function_stats",
    "goroutine_count",
    "summarize",
    "top_functions",
]

#: Rows kept in a summary: the incident status must stay far below etcd's object size
#: limit, and ten rows is what ``go tool pprof -top`` users read anyway.
DEFAULT_TOP = 10


class AnalysisError(ProfileError):
    """The profiles cannot be analysed as asked (wrong kind, incompatible for a diff)."""


@dataclass(frozen=True, slots=True)
class FunctionStat:
    """One function's ``flat`` and ``cum`` values, in the unit of the chosen sample type."""

    function: str
    flat: int
    cum: int

    def to_dict(self) -> dict[str, Any]:
        return {"function": self.function, "flat": self.flat, "cum": self.cum}


@dataclass(frozen=True, slots=True)
class TopReport:
    """The top functions of one profile for one sample type, and that type's total."""

    sample_type: str
    unit: str
    total: int
    functions: tuple[FunctionStat, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "sampleType": self.sample_type,
            "unit": self.unit,
            "total": self.total,
            "functions": [f.to_dict() for f in self.functions],
        }


@dataclass(frozen=True, slots=True)
class FunctionDelta:
    """How much one function's flat and cum values changed between two profiles."""

    function: str
    base_flat: int
    flat: int
    base_cum: int
    cum: int

    @property
    def flat_delta(self) -> int:
        return self.flat - self.base_flat

    @property
    def cum_delta(self) -> int:
        return self.cum - self.base_cum

    def to_dict(self) -> dict[str, Any]:
        return {
            "function": self.function,
            "flatDelta": self.flat_delta,
            "cumDelta": self.cum_delta,
            "baseFlat": self.base_flat,
            "flat": self.flat,
        }


@dataclass(frozen=True, slots=True)
class HeapDiff:
    """Per-function growth from ``base`` to a later profile of the same process."""

    sample_type: str
    unit: str
    base_total: int
    total: int
    base_time_nanos: int
    time_nanos: int
    functions: tuple[FunctionDelta, ...]

    @property
    def total_delta(self) -> int:
        return self.total - self.base_total

    def to_dict(self) -> dict[str, Any]:
        return {
            "sampleType": self.sample_type,
            "unit": self.unit,
            "baseTotal": self.base_total,
            "total": self.total,
            "totalDelta": self.total_delta,
            "baseTimeNanos": self.base_time_nanos,
            "timeNanos": self.time_nanos,
            "functions": [f.to_dict() for f in self.functions],
        }


@dataclass(frozen=True, slots=True)
class Summary:
    """What an incident records: top functions, goroutines, and growth when known."""

    top: TopReport
    goroutines: int | None = None
    diff: HeapDiff | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"top": self.top.to_dict()}
        if self.goroutines is not None:
            out["goroutines"] = self.goroutines
        if self.diff is not None:
            out["diff"] = self.diff.to_dict()
        return out


def _frame_name(location: Location, index: int) -> str:
    line = location.lines[index]
    if line.function is None or not line.function.name:
        return f"0x{location.address:x}"
    return line.function.name


def _frames(location: Location) -> Iterable[str]:
    """Every frame name of a location, innermost first; the address when unsymbolized."""
    if not location.lines:
        return (f"0x{location.address:x}",)
    return (_frame_name(location, i) for i in range(len(location.lines)))


def _leaf(sample: Sample) -> str | None:
    if not sample.locations:
        return None
    first = sample.locations[0]
    return _frame_name(first, 0) if first.lines else f"0x{first.address:x}"


def _flat_cum(profile: Profile, index: int) -> tuple[dict[str, int], dict[str, int], int]:
    flat: dict[str, int] = {}
    cum: dict[str, int] = {}
    total = 0
    # The stack -> names expansion is cached per location: real profiles share them a lot.
    names: dict[int, tuple[str, ...]] = {}
    for sample in profile.samples:
        value = sample.values[index]
        total += abs(value)  # pprof's total, so negative (diff) profiles add up as it says
        if value == 0:
            continue
        seen: set[str] = set()
        for loc in sample.locations:
            frames = names.get(loc.id)
            if frames is None:
                frames = names[loc.id] = tuple(_frames(loc))
            seen.update(frames)
        for name in seen:
            cum[name] = cum.get(name, 0) + value
        leaf = _leaf(sample)
        if leaf is not None:
            flat[leaf] = flat.get(leaf, 0) + value
    return flat, cum, total


def _table(profile: Profile, index: int) -> tuple[list[FunctionStat], int]:
    flat, cum, total = _flat_cum(profile, index)
    stats = [FunctionStat(function=n, flat=flat.get(n, 0), cum=c) for n, c in cum.items()]
    # pprof's flat-name order, so ties come out the same way on every run.
    stats.sort(key=lambda s: (-abs(s.flat), s.function, -abs(s.cum)))
    return stats, total


def function_stats(
    profile: Profile, *, sample_index: str | int | None = None
) -> tuple[FunctionStat, ...]:
    """Flat and cum of every function with a non-zero cum, sorted like ``pprof -top``."""
    stats, _ = _table(profile, profile.sample_index(sample_index))
    return tuple(stats)


def top_functions(
    profile: Profile, *, sample_index: str | int | None = None, limit: int = DEFAULT_TOP
) -> TopReport:
    """The ``limit`` functions with the largest flat value (``go tool pprof -top``).

    Order: |flat| descending, then name, then |cum| descending. ``total`` is the sum of
    |value| over all samples, pprof's "of N total".
    """
    index = profile.sample_index(sample_index)
    stats, total = _table(profile, index)
    vt = profile.sample_types[index]
    return TopReport(
        sample_type=vt.type,
        unit=vt.unit,
        total=total,
        functions=tuple(stats[: max(limit, 0)]),
    )


def goroutine_count(profile: Profile) -> int:
    """Goroutines in a goroutine profile: each sample's value counts a stack's goroutines."""
    types = [st.type for st in profile.sample_types]
    if types != ["goroutine"]:
        raise AnalysisError(f"not a goroutine profile (sample types: {', '.join(types)})")
    return sum(sample.values[0] for sample in profile.samples)


def diff_profiles(
    base: Profile,
    current: Profile,
    *,
    sample_index: str | int | None = None,
    limit: int = DEFAULT_TOP,
) -> HeapDiff:
    """Per-function flat growth from ``base`` to ``current`` (``pprof -diff_base``).

    Sorted by flat growth, largest first; functions whose flat and cum did not change are
    left out. Both profiles must have the same sample types (one process, one kind).
    """
    if [st.type for st in base.sample_types] != [st.type for st in current.sample_types]:
        raise AnalysisError("cannot diff profiles with different sample types")
    index = current.sample_index(sample_index)
    base_flat, base_cum, base_total = _flat_cum(base, index)
    flat, cum, total = _flat_cum(current, index)
    deltas = [
        FunctionDelta(
            function=name,
            base_flat=base_flat.get(name, 0),
            flat=flat.get(name, 0),
            base_cum=base_cum.get(name, 0),
            cum=cum.get(name, 0),
        )
        for name in base_cum.keys() | cum.keys()
    ]
    changed = [d for d in deltas if d.flat_delta or d.cum_delta]
    changed.sort(key=lambda d: (-d.flat_delta, -d.cum_delta, d.function))
    vt = current.sample_types[index]
    return HeapDiff(
        sample_type=vt.type,
        unit=vt.unit,
        base_total=base_total,
        total=total,
        base_time_nanos=base.time_nanos,
        time_nanos=current.time_nanos,
        functions=tuple(changed[: max(limit, 0)]),
    )


def summarize(
    heap: Profile,
    *,
    goroutine: Profile | None = None,
    base: Profile | None = None,
    sample_index: str | int | None = None,
    limit: int = DEFAULT_TOP,
) -> Summary:
    """Everything ``memwarden analyze`` and an incident's status report, in one value."""
    return Summary(
        top=top_functions(heap, sample_index=sample_index, limit=limit),
        goroutines=goroutine_count(goroutine) if goroutine is not None else None,
        diff=diff_profiles(base, heap, sample_index=sample_index, limit=limit)
        if base is not None
        else None,
    )
