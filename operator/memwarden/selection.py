"""Which MemoryPolicy governs which pod: label selectors and precedence.

Pure: no Kubernetes client, no clock. One policy governs a pod (never a merge of
several): the highest ``priority``; on a tie the oldest policy (``creationTimestamp``),
then the lexically smallest name. The decision says why, so status and ``explain`` can
report it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from memwarden.api import LabelSelector, MemoryPolicySpec


def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """Kubernetes LabelSelector semantics; an empty selector matches every pod."""
    for key, value in (selector.matchLabels or {}).items():
        if labels.get(key) != value:
            return False
    for requirement in selector.matchExpressions or []:
        present = requirement.key in labels
        values = set(requirement.values or [])
        if requirement.operator == "In" and not (present and labels[requirement.key] in values):
            return False
        if requirement.operator == "NotIn" and present and labels[requirement.key] in values:
            return False
        if requirement.operator == "Exists" and not present:
            return False
        if requirement.operator == "DoesNotExist" and present:
            return False
    return True


def governed_containers(
    spec: MemoryPolicySpec, container_names: Sequence[str], sidecar_names: Sequence[str] = ()
) -> tuple[str, ...]:
    """The pod's containers this policy governs, in pod order.

    Default: every regular container. A ``containers`` list may also name sidecars
    (init containers with ``restartPolicy: Always``), which run for the pod's life.
    """
    if spec.containers is None:
        return tuple(container_names)
    wanted = set(spec.containers)
    return tuple(name for name in (*container_names, *sidecar_names) if name in wanted)


def container_names(pod: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """A pod dict's regular container names and its sidecar names (what is not a
    container, in a forged review, is not counted: planning refuses such a pod)."""
    spec = pod.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}

    def entries(key: str) -> list[Mapping[str, Any]]:
        value = spec.get(key)
        return [c for c in value if isinstance(c, Mapping)] if isinstance(value, list) else []

    regular = [str(c.get("name", "")) for c in entries("containers")]
    sidecars = [
        str(c.get("name", ""))
        for c in entries("initContainers")
        if c.get("restartPolicy") == "Always"
    ]
    return regular, sidecars


@dataclass(frozen=True)
class Candidate:
    """A policy as selection sees it. ``created`` is an RFC 3339 timestamp (sorts as text)."""

    namespace: str
    name: str
    created: str
    spec: MemoryPolicySpec

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def precedence(self) -> tuple[int, str, str]:
        """Sort key: smaller wins."""
        return (-self.spec.priority, self.created, self.name)


@dataclass(frozen=True)
class Selection:
    """The outcome for one pod: the governing policy (or none), the others that matched."""

    winner: Candidate | None
    others: tuple[Candidate, ...] = ()
    governed: tuple[str, ...] = ()
    reason: str = ""


def _why(winner: Candidate, runner_up: Candidate) -> str:
    if winner.spec.priority != runner_up.spec.priority:
        return (
            f"{winner.name} has the highest priority "
            f"({winner.spec.priority} > {runner_up.spec.priority})"
        )
    if winner.created != runner_up.created:
        return f"equal priority {winner.spec.priority}: {winner.name} is the oldest policy"
    return f"equal priority and age: {winner.name} sorts first by name"


def select_policy(
    *,
    labels: Mapping[str, str],
    container_names: Sequence[str],
    candidates: Iterable[Candidate],
    sidecar_names: Sequence[str] = (),
) -> Selection:
    """The policy that governs a pod with these labels and containers, and why."""
    matching: list[tuple[Candidate, tuple[str, ...]]] = []
    for candidate in candidates:
        if not selector_matches(candidate.spec.selector, labels):
            continue
        governed = governed_containers(candidate.spec, container_names, sidecar_names)
        if governed:
            matching.append((candidate, governed))
    if not matching:
        return Selection(winner=None, reason="no policy selects this pod")
    matching.sort(key=lambda pair: pair[0].precedence())
    (winner, governed), rest = matching[0], [c for c, _ in matching[1:]]
    reason = _why(winner, rest[0]) if rest else f"{winner.name} is the only matching policy"
    return Selection(winner=winner, others=tuple(rest), governed=governed, reason=reason)


def _anchor(candidate: Candidate) -> tuple[str, str] | None:
    """One label pair every pod the policy selects must carry (None: no such pair)."""
    match_labels = candidate.spec.selector.matchLabels or {}
    if not match_labels:
        return None
    key = min(match_labels)
    return key, match_labels[key]


def select_for_pod(pod: Mapping[str, Any], candidates: Iterable[Candidate]) -> Selection:
    """The policy among ``candidates`` that governs ``pod`` (a pod dict or view), and why:
    its labels and containers (sidecars apart) read the one way admission reads them."""
    regular, sidecars = container_names(pod)
    return select_policy(
        labels=(pod.get("metadata") or {}).get("labels") or {},
        container_names=regular,
        sidecar_names=sidecars,
        candidates=candidates,
    )


@dataclass(frozen=True)
class NamespacePolicies:
    """One namespace's policies, by name and by one required label pair. Immutable: an
    update builds a new table and swaps it in, so a reader never sees a policy missing
    because it is being replaced."""

    by_name: Mapping[str, Candidate]
    anchored: Mapping[tuple[str, str], tuple[Candidate, ...]]
    unanchored: tuple[Candidate, ...]

    @classmethod
    def build(cls, candidates: Iterable[Candidate]) -> NamespacePolicies:
        by_name = {c.name: c for c in candidates}
        anchored: dict[tuple[str, str], list[Candidate]] = {}
        unanchored: list[Candidate] = []
        for candidate in by_name.values():
            anchor = _anchor(candidate)
            if anchor is None:
                unanchored.append(candidate)
            else:
                anchored.setdefault(anchor, []).append(candidate)
        return cls(
            by_name=by_name,
            anchored={pair: tuple(found) for pair, found in anchored.items()},
            unanchored=tuple(unanchored),
        )

    def candidates_for(self, labels: Mapping[str, str]) -> list[Candidate]:
        """The policies that may select a pod with these labels (a superset, never less)."""
        found = list(self.unanchored)
        for pair in labels.items():
            found.extend(self.anchored.get(pair, ()))
        return found

    def select_pod(self, pod: Mapping[str, Any]) -> Selection:
        """The policy of this namespace that governs ``pod`` (a pod dict or view), and why."""
        labels = (pod.get("metadata") or {}).get("labels") or {}
        return select_for_pod(pod, self.candidates_for(labels))


class PolicyIndex:
    """Policies by namespace, label-anchored, so that finding a pod's candidates costs a
    few dict look-ups instead of a scan of every policy.

    Copy-on-write per namespace: writers (the policy watch) build a new
    ``NamespacePolicies`` and swap it in with one assignment; readers (admission, on the
    event loop) take a namespace's table once and use it without a lock.
    """

    def __init__(self) -> None:
        self._namespaces: dict[str, NamespacePolicies] = {}
        self._listeners: list[Callable[[str | None], None]] = []

    def subscribe(self, listener: Callable[[str | None], None]) -> None:
        """Call ``listener(namespace)`` after each change (``None``: the whole index), so
        a copy elsewhere (the admission worker's) follows this one."""
        self._listeners.append(listener)

    def swap_namespace(self, namespace: str, candidates: Iterable[Candidate]) -> None:
        """Make ``candidates`` the namespace's whole set of policies."""
        table = NamespacePolicies.build(candidates)
        if table.by_name:
            self._namespaces[namespace] = table
        else:
            self._namespaces.pop(namespace, None)
        for listener in self._listeners:
            listener(namespace)

    def replace_all(self, candidates: Iterable[Candidate]) -> None:
        """Make ``candidates`` the whole index (a fresh listing of every policy)."""
        grouped: dict[str, list[Candidate]] = {}
        for candidate in candidates:
            grouped.setdefault(candidate.namespace, []).append(candidate)
        self._namespaces = {ns: NamespacePolicies.build(found) for ns, found in grouped.items()}
        for listener in self._listeners:
            listener(None)

    def all_candidates(self) -> list[Candidate]:
        return [c for table in list(self._namespaces.values()) for c in table.by_name.values()]

    def remove(self, *, namespace: str, name: str) -> None:
        current = self._namespaces.get(namespace)
        if current is None or name not in current.by_name:
            return
        self.swap_namespace(namespace, [c for c in current.by_name.values() if c.name != name])

    def namespaces(self) -> list[str]:
        return sorted(self._namespaces)

    def in_namespace(self, namespace: str) -> list[Candidate]:
        table = self._namespaces.get(namespace)
        return sorted(table.by_name.values(), key=Candidate.precedence) if table else []

    def candidates_for(self, *, namespace: str, labels: Mapping[str, str]) -> list[Candidate]:
        """The policies that may select a pod with these labels (a superset, never less)."""
        table = self._namespaces.get(namespace)
        return [] if table is None else table.candidates_for(labels)

    def select(
        self,
        *,
        namespace: str,
        labels: Mapping[str, str],
        container_names: Sequence[str],
        sidecar_names: Sequence[str] = (),
    ) -> Selection:
        return select_policy(
            labels=labels,
            container_names=container_names,
            sidecar_names=sidecar_names,
            candidates=self.candidates_for(namespace=namespace, labels=labels),
        )

    def __len__(self) -> int:
        return sum(len(table.by_name) for table in list(self._namespaces.values()))
