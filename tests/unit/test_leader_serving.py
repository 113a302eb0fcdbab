"""The serving part under leader election, without a cluster: the admission policy feed,
the follower's Alertmanager intake, which kopf memo owns what, the tasks kopf spares."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import kopf
import pytest
from aiohttp import web_protocol
from kubernetes import client

from memwarden.handlers import alerts, serving, state
from memwarden.kube import Kube
from memwarden.risk.adapters.receiver import Overloaded
from memwarden.settings import LeaderSettings, Settings
from memwarden_testing.builders import make_policy, make_policy_spec

pytestmark = pytest.mark.unit


def elected(tmp_path: Path) -> state.OperatorState:
    settings = Settings.model_validate(
        {"evidence": {"dir": str(tmp_path)}, "leader": {"election": True}}
    )
    return state.build(settings, namespaces=None, kube=Kube(client.ApiClient()))


def policy(namespace: str, name: str, app: str, *, valid: bool = True) -> dict[str, Any]:
    spec = make_policy_spec(match_labels={"app": app}, memory={"limit": "1Gi"})
    if not valid:
        spec["memory"] = {"limit": "a lot"}
    obj = make_policy(name, namespace=namespace, spec=spec)
    obj["metadata"]["creationTimestamp"] = "2026-12-01T06:00:00Z"
    return obj


def names(shared: state.OperatorState, namespace: str) -> list[str]:
    return [c.name for c in shared.policies.in_namespace(namespace)]


def test_the_policy_feed_follows_lists_and_events(tmp_path: Path) -> None:
    shared = elected(tmp_path)
    feed = serving.PolicyFeed(shared)
    feed.listed(
        None,
        [policy("shop", "a", "x"), policy("pay", "b", "y"), policy("pay", "bad", "z", valid=False)],
    )
    assert names(shared, "shop") == ["a"] and names(shared, "pay") == ["b"]
    feed.changed("ADDED", policy("shop", "c", "w"))
    feed.changed("DELETED", policy("pay", "b", "y"))
    feed.changed("MODIFIED", policy("shop", "a", "x", valid=False))  # now refused: out
    assert names(shared, "shop") == ["c"] and names(shared, "pay") == []
    # A fresh list of the cluster drops what is gone.
    feed.listed(None, [policy("pay", "d", "v")])
    assert names(shared, "shop") == [] and names(shared, "pay") == ["d"]


def test_a_namespaces_list_leaves_the_other_namespaces_alone(tmp_path: Path) -> None:
    shared = elected(tmp_path)
    feed = serving.PolicyFeed(shared)
    feed.listed("shop", [policy("shop", "a", "x")])
    feed.listed("pay", [policy("pay", "b", "y")])
    feed.listed("shop", [])
    assert names(shared, "shop") == [] and names(shared, "pay") == ["b"]


class FakeIntake:
    def __init__(self) -> None:
        self.submitted: list[Any] = []

    async def submit(self, findings: Any) -> None:
        self.submitted.append(findings)

    def count_batch(self, batch: Any) -> None:
        pass


def test_a_followers_intake_asks_alertmanager_to_send_again() -> None:
    relay = alerts.LeaderIntake()
    with pytest.raises(Overloaded, match="not the leader"):
        asyncio.run(relay.submit([]))
    leader = FakeIntake()
    relay.attach(leader)  # type: ignore[arg-type]
    asyncio.run(relay.submit(["finding"]))  # type: ignore[list-item]
    assert leader.submitted == [["finding"]]


def test_kopfs_memo_leaves_serving_to_the_serving_part_only_under_election(
    tmp_path: Path,
) -> None:
    shared = elected(tmp_path)
    kopfs = kopf.Memo({state.STATE: shared})
    servings = kopf.Memo({state.STATE: shared, state.SERVING: True})
    assert state.served_elsewhere(kopfs) and not state.served_elsewhere(servings)
    single = state.build(
        Settings.model_validate({"evidence": {"dir": str(tmp_path)}}),
        namespaces=None,
        kube=Kube(client.ApiClient()),
    )
    assert not state.served_elsewhere(kopf.Memo({state.STATE: single}))
    assert single.leading, "without election the one replica reconciles"


@pytest.mark.parametrize(
    ("configured", "environ", "expected"),
    [
        pytest.param("given", {"POD_NAME": "pod-1"}, "given", id="configured"),
        pytest.param(None, {"POD_NAME": "pod-1"}, "pod-1", id="pod-name"),
    ],
)
def test_identity(configured: str | None, environ: dict[str, str], expected: str) -> None:
    assert serving.identity(LeaderSettings(identity=configured), environ) == expected


def test_identity_without_a_pod_name_is_host_and_pid() -> None:
    found = serving.identity(LeaderSettings(), {})
    host, _, pid = found.rpartition("-")
    assert host and pid.isdigit()


def test_kopf_spares_what_existed_before_it_and_the_http_servers_requests() -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        async def handler() -> None:
            await asyncio.Event().wait()  # runs until cancelled

        before = asyncio.create_task(handler())
        spared = serving.ServingTasks({before})
        # aiohttp's own per-connection coroutine (cancelled before it ever runs)
        request = asyncio.create_task(web_protocol.RequestHandler.start(None))  # type: ignore[arg-type]
        kopfs = asyncio.create_task(handler())
        result = (before in spared, request in spared, kopfs in spared)
        for task in (before, request, kopfs):
            task.cancel()
        await asyncio.gather(before, request, kopfs, return_exceptions=True)
        return result

    assert asyncio.run(scenario()) == (True, True, False)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        pytest.param(
            {"renew_deadline_seconds": 15}, "renew_deadline_seconds", id="renew-not-below-lease"
        ),
        pytest.param(
            {"retry_period_seconds": 10}, "retry_period_seconds", id="retry-not-below-renew"
        ),
        pytest.param({"lease_duration_seconds": 0}, "lease_duration_seconds", id="zero-lease"),
        pytest.param({"lease_name": "Not A Name"}, "lease_name", id="bad-name"),
    ],
)
def test_bad_leader_settings_are_refused_naming_the_field(
    values: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        Settings.model_validate({"leader": values})
