"""The Argo CD health checks docs/api.md gives, run by a real Lua interpreter (lua5.4, from
Debian: hack/bootstrap.sh installs it) against objects shaped as memwarden writes them.

Argo CD runs such a script with the object as the global ``obj`` and reads the table it
returns (``status``, ``message``); the harness does the same.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from memwarden_testing.cluster import REPO

pytestmark = pytest.mark.integration

KEY = "resource.customizations.health.memwarden.dev_{kind}"


def health_script(kind: str) -> str:
    text = (REPO / "docs" / "api.md").read_text()
    for block in re.findall(r"```yaml\n(.*?)```", text, re.S):
        doc = yaml.safe_load(block)
        if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
            script = (doc.get("data") or {}).get(KEY.format(kind=kind))
            if script:
                return str(script)
    raise AssertionError(f"docs/api.md has no Argo CD health check for {kind}")


def lua_value(value: Any) -> str:
    """A Python value as a Lua literal (what Argo CD hands a script: a table)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid Lua string literal here
    if isinstance(value, list):
        return "{" + ", ".join(lua_value(v) for v in value) + "}"
    return "{" + ", ".join(f"[{json.dumps(k)}] = {lua_value(v)}" for k, v in value.items()) + "}"


def health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    lua = shutil.which("lua5.4")
    if lua is None:
        pytest.fail("lua5.4 is required (hack/bootstrap.sh installs it from Debian)")
    program = (
        f"obj = {lua_value(obj)}\n"
        f"local hs = (function()\n{health_script(kind)}\nend)()\n"
        'io.write(hs.status, "\\t", hs.message or "")\n'
    )
    out = subprocess.run([lua, "-"], input=program, capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    status, _, message = out.stdout.partition("\t")
    return status, message


def condition(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


def policy(generation: int = 2, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "checkout", "generation": generation}, "status": status}


READY = condition("Ready", "True", "Reconciled", "3 pods governed, 3 compliant, 0 drifted")
FEASIBLE = condition("Feasible", "True", "Feasible", "every governed pod can be sized")


@pytest.mark.parametrize(
    ("obj", "expected", "says"),
    [
        pytest.param(policy(), "Progressing", "waiting", id="no-status-yet"),
        pytest.param(
            policy(observedGeneration=1, conditions=[READY, FEASIBLE]),
            "Progressing",
            "generation 2",
            id="new-generation-not-observed",
        ),
        pytest.param(
            policy(observedGeneration=2, conditions=[READY, FEASIBLE]),
            "Healthy",
            "3 compliant",
            id="ready",
        ),
        pytest.param(
            policy(
                observedGeneration=2,
                conditions=[
                    condition("Ready", "False", "Infeasible", "1 cannot be sized"),
                    condition("Feasible", "False", "Infeasible", "c1: no memory.high"),
                ],
            ),
            "Degraded",
            "no memory.high",
            id="infeasible",
        ),
        pytest.param(
            policy(
                observedGeneration=2,
                conditions=[
                    READY,
                    FEASIBLE,
                    condition("Updated", "False", "InProgress", "2 pods to update"),
                ],
            ),
            "Progressing",
            "2 pods to update",
            id="updating",
        ),
        pytest.param(
            policy(
                observedGeneration=2,
                conditions=[
                    READY,
                    FEASIBLE,
                    condition("Updated", "False", "Stuck", "1 pods cannot be updated"),
                ],
            ),
            "Degraded",
            "cannot be updated",
            id="update-stuck",
        ),
    ],
)
def test_memorypolicy_health(obj: dict[str, Any], expected: str, says: str) -> None:
    status, message = health("MemoryPolicy", obj)
    assert status == expected and says in message, (status, message)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param({}, "Progressing", id="new"),
        pytest.param({"phase": "Pending"}, "Progressing", id="pending"),
        pytest.param({"phase": "Capturing", "reason": "DebugContainerAdded"}, "Progressing"),
        pytest.param({"phase": "Collected", "reason": "BundleStored"}, "Healthy", id="collected"),
        pytest.param({"phase": "Skipped", "reason": "Cooldown"}, "Healthy", id="skipped"),
        pytest.param({"phase": "Failed", "reason": "PodNotFound"}, "Degraded", id="failed"),
    ],
)
def test_memoryincident_health(status: dict[str, Any], expected: str) -> None:
    obj = {"metadata": {"name": "checkout-1", "generation": 1}, "status": status}
    got, message = health("MemoryIncident", obj)
    assert got == expected, (got, message)
    if status.get("reason"):
        assert status["reason"] in message
