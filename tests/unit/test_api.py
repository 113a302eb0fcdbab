"""The API models: the CRDs under crds/ are generated from them, and they refuse what the
CRD refuses (for offline use by `memwarden explain`)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from memwarden.api import MemoryPolicySpec
from memwarden.commands.crds import render
from memwarden.crdgen import all_crds
from memwarden_testing.builders import make_policy_spec
from memwarden_testing.cluster import REPO
from memwarden_testing.invalid_policies import INVALID

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("file_name", sorted(all_crds()))
def test_crds_directory_matches_the_models(file_name: str) -> None:
    on_disk = (REPO / "crds" / file_name).read_text()
    assert on_disk == render(all_crds()[file_name]), "crds/ drifted: run `make crds`"


def _walk(schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths in a schema that break Kubernetes' structural rules."""
    problems = []
    if "$ref" in schema or "anyOf" in schema or "oneOf" in schema or "allOf" in schema:
        problems.append(path or "/")
    if "type" not in schema and not schema.get("x-kubernetes-int-or-string"):
        problems.append(f"{path or '/'}: no type")
    if schema.get("additionalProperties") is False:
        problems.append(f"{path}: additionalProperties false")
    for name, sub in (schema.get("properties") or {}).items():
        problems += _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        problems += _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        problems += _walk(schema["additionalProperties"], f"{path}{{}}")
    return problems


@pytest.mark.parametrize("file_name", sorted(all_crds()))
def test_generated_schemas_are_structural(file_name: str) -> None:
    crd = yaml.safe_load(render(all_crds()[file_name]))
    for version in crd["spec"]["versions"]:
        assert _walk(version["schema"]["openAPIV3Schema"]) == []


@pytest.mark.parametrize(("spec", "field"), INVALID)
def test_models_refuse_what_the_crd_refuses(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError):
        MemoryPolicySpec.model_validate(spec)


@pytest.mark.parametrize(
    "memory",
    [
        pytest.param({"request": "512Mi", "limit": "1Gi"}, id="plain"),
        pytest.param({"limit": "1Gi"}, id="limit-only"),
        pytest.param({"protect": "1Gi"}, id="protect-alone"),
        pytest.param({"max": "2Gi"}, id="max-alone"),
        pytest.param({"protect": "1Gi", "max": "2Gi"}, id="protect-max"),
        pytest.param({"high": "1536Mi", "max": "2Gi"}, id="high-max"),
        pytest.param({"protect": "1Gi", "high": "1536Mi", "max": "2Gi"}, id="all-three-ordered"),
    ],
)
def test_models_accept_valid_memory_sections(memory: dict[str, str]) -> None:
    spec = MemoryPolicySpec.model_validate(make_policy_spec(memory=memory))
    assert spec.memory is not None


def test_api_docs_field_reference_matches_the_models() -> None:
    from crd_docs import DOC_BEGIN, DOC_END, reference_markdown

    text = (REPO / "docs" / "api.md").read_text()
    generated = text[text.index(DOC_BEGIN) : text.index(DOC_END) + len(DOC_END)] + "\n"
    assert generated == reference_markdown(), "docs/api.md drifted: run make crds"
