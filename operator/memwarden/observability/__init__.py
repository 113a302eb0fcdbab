"""Observability: the operator's Prometheus metrics and its health probes."""
