"""hypothesis strategies for garbage: JSON of any shape, values of the wrong type, size or
depth, and well-formed objects (a governed pod) with fields mutated or removed.

Shared by the fuzz tests of the HTTP surfaces (``tests/integration/test_http_fuzz.py``)
and the property tests of the pure core they exercise (``tests/unit/test_admission.py``).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from memwarden_testing.builders import make_container, make_pod

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=25,
)
#: Values a field of a well-formed object is replaced with: wrong types, huge, deep.
GARBAGE_VALUES = st.one_of(
    JSON,
    st.sampled_from(
        [
            "x" * 300_000,
            10**400,
            -1,
            1e308,
            "",
            "\u0000",
            "\ud800",  # a lone surrogate: json.dumps escapes it, not every parser takes it
            "☃" * 1000,
            {"": {"": {"": None}}},
        ]
    ),
    st.integers(min_value=1, max_value=900).map(
        lambda depth: json.loads("[" * depth + "]" * depth)
    ),
)
#: :func:`mutate` removes the field instead of setting it.
DELETE = object()

#: Fields of :func:`governed_pod` worth breaking: what admission reads, and its parents.
POD_PATHS: list[tuple[str | int, ...]] = [
    ("metadata",),
    ("metadata", "name"),
    ("metadata", "namespace"),
    ("metadata", "labels"),
    ("metadata", "labels", "app"),
    ("metadata", "annotations"),
    ("spec",),
    ("spec", "containers"),
    ("spec", "containers", 0),
    ("spec", "containers", 0, "name"),
    ("spec", "containers", 0, "resources"),
    ("spec", "containers", 0, "resources", "limits"),
    ("spec", "containers", 0, "resources", "limits", "memory"),
    ("spec", "containers", 0, "resources", "requests", "memory"),
    ("spec", "containers", 0, "env"),
    ("spec", "containers", 0, "env", 0),
    ("spec", "containers", 0, "env", 0, "value"),
    ("spec", "initContainers"),
    ("spec", "overhead"),
    ("spec", "resources"),
]


def governed_pod(namespace: str, name: str = "fuzzed") -> dict[str, Any]:
    """A pod that ``make_policy_spec``'s default selector (``app: checkout``) governs."""
    container = make_container(memory_request="1Mi", env={"GOGC": "50", "LOG": "info"})
    return make_pod(name, namespace=namespace, labels={"app": "checkout"}, containers=[container])


def mutate(obj: Any, path: tuple[str | int, ...], value: Any) -> None:
    """Set (or with :data:`DELETE` remove) ``path`` in ``obj``, creating nothing: a path
    whose parent is missing or not a container is left alone."""
    parent: Any = obj
    for key in path[:-1]:
        try:
            parent = parent[key]
        except (KeyError, IndexError, TypeError):
            return
    last = path[-1]
    if isinstance(parent, dict) or (isinstance(parent, list) and isinstance(last, int)):
        try:
            if value is DELETE:
                del parent[last]
            else:
                parent[last] = value
        except (KeyError, IndexError, TypeError):
            return


@st.composite
def garbled_pods(draw: st.DrawFn, namespace: str) -> dict[str, Any]:
    """:func:`governed_pod` with up to four fields replaced by garbage or removed."""
    pod = governed_pod(namespace)
    for path, value in draw(
        st.lists(
            st.tuples(st.sampled_from(POD_PATHS), st.just(DELETE) | GARBAGE_VALUES), max_size=4
        )
    ):
        mutate(pod, path, value)
    return pod
