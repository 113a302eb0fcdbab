"""``kubectl memwarden ...``: kubectl finds the ``kubectl-memwarden`` entry point (pyproject
scripts) on PATH and runs it as a plugin. The project's own kubectl (same minor as the
control plane) runs it; no cluster is needed for these commands."""

from __future__ import annotations

import json
import os
import subprocess
from importlib.metadata import version

import pytest

from memwarden_testing.cluster import KUBECTL, REPO

pytestmark = pytest.mark.integration

BIN = REPO / ".venv" / "bin"


def kubectl_memwarden(*args: str) -> subprocess.CompletedProcess[str]:
    assert (BIN / "kubectl-memwarden").exists(), "no kubectl-memwarden: run uv sync (bootstrap)"
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO / "operator"),  # this checkout's code, whatever the venv's
    }
    return subprocess.run(
        [str(KUBECTL), "memwarden", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_kubectl_lists_and_runs_the_plugin() -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    plugins = subprocess.run(
        [str(KUBECTL), "plugin", "list", "--name-only"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert "kubectl-memwarden" in plugins.stdout, plugins.stdout + plugins.stderr

    result = kubectl_memwarden("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"memwarden {version('memwarden')}\n"


def test_the_plugin_speaks_as_kubectl_memwarden() -> None:
    result = kubectl_memwarden("incidents", "list", "-o", "xml")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: kubectl memwarden incidents list"), result.stderr


def test_the_plugin_prints_documents() -> None:
    result = kubectl_memwarden("crds", "-o", "json")
    assert result.returncode == 0, result.stderr
    kinds = [item["spec"]["names"]["kind"] for item in json.loads(result.stdout)["items"]]
    assert kinds == ["MemoryPolicy", "MemoryIncident"]
