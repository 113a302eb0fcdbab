"""health.py readiness and the metrics helpers."""

from __future__ import annotations

import asyncio

import kopf
import pytest

from memwarden.handlers import background
from memwarden.observability import health, metrics


def test_ready_only_with_an_unexpired_serving_certificate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "_certificate_not_after", None)
    monkeypatch.setattr(health, "_webhook_down", None)
    monkeypatch.setattr(health, "_draining", False)
    assert health.readiness(1000.0) == "no webhook serving certificate yet"
    health.record_certificate(2000.0)
    assert health.readiness(1000.0) is None
    assert health.readiness(2000.0) == "the webhook serving certificate expired"


def test_not_ready_while_the_webhook_does_not_listen_or_drains(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(health, "_certificate_not_after", 2000.0)
    monkeypatch.setattr(health, "_webhook_down", "the webhook is not listening yet")
    monkeypatch.setattr(health, "_draining", False)
    assert health.readiness(1000.0) == "the webhook is not listening yet"
    health.webhook_listening(True)
    assert health.readiness(1000.0) is None
    health.webhook_listening(False, "the admission worker exited; restarting it")
    assert health.readiness(1000.0) == "the admission worker exited; restarting it"
    health.webhook_listening(True)
    health.start_draining()  # SIGTERM: out of the Service while the webhook still answers
    assert health.readiness(1000.0) == "draining: the operator is stopping"
    health.webhook_listening(True)
    assert health.readiness(1000.0) == "draining: the operator is stopping"


def test_reconciled_counts_passes_and_failures() -> None:
    def value(counter: object) -> float:
        return metrics.REGISTRY.get_sample_value(counter, {"kind": "test"}) or 0.0  # type: ignore[arg-type]

    @metrics.reconciled("test")
    def ok() -> int:
        return 1

    @metrics.reconciled("test")
    def broken() -> None:
        raise RuntimeError("boom")

    before = (value("memwarden_reconciles_total"), value("memwarden_reconcile_errors_total"))
    assert ok() == 1
    with pytest.raises(RuntimeError):
        broken()
    after = (value("memwarden_reconciles_total"), value("memwarden_reconcile_errors_total"))
    assert (after[0] - before[0], after[1] - before[1]) == (2.0, 1.0)
    assert ok.__name__ == "ok"  # kopf derives handler ids from the function's name


def test_liveness_names_what_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "_liveness_checks", {})
    assert health.liveness() == []
    broken: list[str] = []
    health.watch("status_loop", lambda: broken[0] if broken else None)
    assert health.liveness() == []
    broken.append("ended: RuntimeError: boom")
    assert health.liveness() == ["status_loop: ended: RuntimeError: boom"]
    health.unwatch("status_loop")
    assert health.liveness() == []


def test_a_background_loop_that_ends_fails_liveness(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop that must run for ever and raised is reported; one stopped on purpose is not."""
    monkeypatch.setattr(health, "_liveness_checks", {})

    async def main() -> tuple[list[str], list[str], list[str]]:
        memo = kopf.Memo()

        async def crashes() -> None:
            raise RuntimeError("boom")

        async def runs() -> None:
            await asyncio.Event().wait()

        background.start(memo, "crashes", crashes())
        background.start(memo, "runs", runs())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        crashed = health.liveness()
        await background.stop(memo, "crashes")
        after_crash_stopped = health.liveness()
        await background.stop(memo, "runs")
        return crashed, after_crash_stopped, health.liveness()

    crashed, after_crash_stopped, after_all = asyncio.run(main())
    assert crashed == ["crashes: ended: RuntimeError: boom"]
    assert after_crash_stopped == []
    assert after_all == []
