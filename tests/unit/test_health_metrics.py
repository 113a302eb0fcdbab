"""health.py readiness and the metrics helpers."""

from __future__ import annotations

import pytest

from memwarden import health, metrics


def test_ready_only_with_an_unexpired_serving_certificate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "_certificate_not_after", None)
    assert health.readiness(1000.0) == "no webhook serving certificate yet"
    health.record_certificate(2000.0)
    assert health.readiness(1000.0) is None
    assert health.readiness(2000.0) == "the webhook serving certificate expired"


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
