"""Risk adapters: the Prometheus client and the Alertmanager receiver (HTTP, threads)."""
