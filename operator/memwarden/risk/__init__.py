"""OOM-risk detection: PromQL builders and signal math (pure), the Prometheus adapter,
the Alertmanager receiver, and the decision to open a MemoryIncident (pure)."""
