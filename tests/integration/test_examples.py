"""Every manifest a user may copy — examples/ and the YAML in the README and docs — is
accepted by the real API server with memwarden's CRDs (server-side dry run), so the
examples cannot drift from the schema."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from memwarden_testing.cluster import REPO, kubectl

pytestmark = pytest.mark.integration

#: Kinds in the docs that need CRDs memwarden does not own (the Prometheus Operator's), and
#: the kubelet's own configuration file, which no API server serves (explain's tests read
#: it). Every other manifest goes to the API server: a new kind needs no change here.
UNSERVED = {"PrometheusRule", "Prometheus", "KubeletConfiguration"}
_FENCED_YAML = re.compile(r"^```yaml\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _manifests() -> list[Any]:
    found: list[Any] = []
    sources: list[tuple[str, str]] = [
        (str(path.relative_to(REPO)), path.read_text())
        for path in sorted((REPO / "examples").rglob("*.yaml"))
    ]
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for number, block in enumerate(_FENCED_YAML.findall(path.read_text()), start=1):
            sources.append((f"{path.relative_to(REPO)}#yaml{number}", block))
    for origin, text in sources:
        for index, doc in enumerate(yaml.safe_load_all(text)):
            if isinstance(doc, dict) and doc.get("kind") and doc["kind"] not in UNSERVED:
                found.append(pytest.param(doc, id=f"{origin}#{index}:{doc['kind']}"))
    return found


MANIFESTS = _manifests()


def test_the_examples_are_found() -> None:
    kinds = {p.values[0]["kind"] for p in MANIFESTS}
    assert {"MemoryPolicy", "MemoryIncident", "Deployment", "Role", "RoleBinding"} <= kinds


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_the_api_server_accepts_the_example(
    manifest: dict[str, Any], crds: Path, devcluster: Path, namespace: str
) -> None:
    doc = {**manifest, "metadata": {**manifest.get("metadata", {}), "namespace": namespace}}
    result = kubectl(
        devcluster, "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc), check=False
    )
    assert result.returncode == 0, result.stderr
    assert "(server dry run)" in result.stdout
