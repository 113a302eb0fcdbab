"""OOM-risk detection. Modules here are pure (PromQL builders, signal maths, the decision to
open a MemoryIncident, the Alertmanager payload model); the Prometheus client and the
Alertmanager receiver, which do I/O, are in :mod:`memwarden.risk.adapters`."""
