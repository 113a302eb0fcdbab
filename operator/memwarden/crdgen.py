"""The CRDs generated from the API models (:mod:`memwarden.api`): structural schemas,
printer columns, CEL rules carried over. Pure: data in, data out.

Kept apart from the models so api.py holds only what the operator reads and writes. It
ships in the wheel because ``memwarden crds`` prints the CRDs of the installed version:
Helm never upgrades CRDs, so a user upgrading applies them with
``memwarden crds | kubectl apply --server-side -f -`` (docs/install.md).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from memwarden.api import (
    GROUP,
    VERSION,
    MemoryIncidentSpec,
    MemoryIncidentStatus,
    MemoryPolicySpec,
    MemoryPolicyStatus,
)

_DROP_KEYS = {"title"}


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Turn pydantic's JSON schema into a Kubernetes structural schema (no refs/anyOf)."""
    if "$ref" in schema:
        target = defs[schema["$ref"].split("/")[-1]]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return _resolve(merged, defs)
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express anyOf {schema['anyOf']} structurally")
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        return _resolve({**options[0], **rest}, defs)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROP_KEYS or (key == "default" and value is None):
            continue
        if key == "properties":
            out["properties"] = {name: _resolve(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out["items"] = _resolve(value, defs)
        elif key == "additionalProperties":
            # ``false`` (extra="forbid") is not structural: the API server prunes or,
            # with kubectl's strict field validation, refuses unknown fields itself.
            if isinstance(value, dict):
                out[key] = _resolve(value, defs)
        elif key == "description":
            out[key] = _clean_description(value)
        elif key in {"exclusiveMinimum", "exclusiveMaximum"} and not isinstance(value, bool):
            # JSON Schema 2020 (pydantic) -> OpenAPI 3.0 (Kubernetes): a bound plus a flag.
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = value
    if out.get("enum") and "type" not in out:
        out["type"] = "string"
    return out


def _clean_description(text: str) -> str:
    """A docstring as one line of plain text: no reST markup, folded white space."""
    return " ".join(text.replace("``", "").split())


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of ``model`` for a CRD version."""
    raw = model.model_json_schema(ref_template="#/$defs/{model}")
    defs = raw.pop("$defs", {})
    return _resolve(raw, defs)


def _strip_description(schema: dict[str, Any]) -> None:
    schema.pop("description", None)


def _object_schema(
    *, spec: type[BaseModel], status: type[BaseModel], description: str
) -> dict[str, Any]:
    spec_schema = openapi_schema(spec)
    status_schema = openapi_schema(status)
    _strip_description(status_schema)
    return {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }


#: (name, type, jsonPath) or (name, type, jsonPath, priority): priority 1 shows only
#: with ``kubectl get -o wide``.
PrinterColumn = tuple[str, str, str] | tuple[str, str, str, int]


def _printer_column(name: str, type_: str, path: str, priority: int = 0) -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path}
    if priority:
        column["priority"] = priority
    return column


def _crd(
    *,
    kind: str,
    plural: str,
    short_name: str,
    columns: list[PrinterColumn],
    spec: type[BaseModel],
    status: type[BaseModel],
    description: str,
) -> dict[str, Any]:
    """A namespaced CRD of ``GROUP``/``VERSION`` with a status subresource."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "plural": plural,
                "singular": kind.lower(),
                "kind": kind,
                "listKind": f"{kind}List",
                "shortNames": [short_name],
                "categories": ["memwarden"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [_printer_column(*column) for column in columns],
                    "schema": {
                        "openAPIV3Schema": _object_schema(
                            spec=spec, status=status, description=description
                        )
                    },
                }
            ],
        },
    }


def memorypolicy_crd() -> dict[str, Any]:
    """The MemoryPolicy CustomResourceDefinition, generated from the models."""
    return _crd(
        kind="MemoryPolicy",
        plural="memorypolicies",
        short_name="mpol",
        columns=[
            ("Mode", "string", ".spec.mode"),
            ("Update", "string", ".spec.update"),
            ("Ready", "string", '.status.conditions[?(@.type=="Ready")].status'),
            ("Feasible", "string", '.status.conditions[?(@.type=="Feasible")].status'),
            ("Matched", "integer", ".status.matchedPods"),
            ("Compliant", "integer", ".status.compliantPods"),
            ("Drifted", "integer", ".status.driftedPods"),
            ("Age", "date", ".metadata.creationTimestamp"),
        ],
        spec=MemoryPolicySpec,
        status=MemoryPolicyStatus,
        description="MemoryPolicy sets memory requests/limits and Go runtime settings for the "
        "pods it selects, and watches them for OOM risk.",
    )


def memoryincident_crd() -> dict[str, Any]:
    """The MemoryIncident CustomResourceDefinition, generated from the models."""
    return _crd(
        kind="MemoryIncident",
        plural="memoryincidents",
        short_name="minc",
        columns=[
            ("Pod", "string", ".spec.pod"),
            ("Signal", "string", ".spec.trigger.signal"),
            ("Phase", "string", ".status.phase"),
            ("Reason", "string", ".status.reason"),
            ("Bundle", "string", ".status.bundle", 1),
            ("Top", "string", ".status.analysis.top[0].function"),
            ("Age", "date", ".metadata.creationTimestamp"),
        ],
        spec=MemoryIncidentSpec,
        status=MemoryIncidentStatus,
        description="MemoryIncident records one evidence capture from a container heading for "
        "OOM; create one by hand to capture on demand.",
    )


def all_crds() -> dict[str, dict[str, Any]]:
    """File name under ``crds/`` -> CRD document."""
    return {
        f"memorypolicies.{GROUP}.yaml": memorypolicy_crd(),
        f"memoryincidents.{GROUP}.yaml": memoryincident_crd(),
    }
