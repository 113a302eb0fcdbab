"""memwarden: memory policy for Kubernetes workloads (Go first) and OOM evidence capture.

The package root holds the pure core (api, sizing, selection, mutation, status) and the
adapters; kopf handlers live in ``memwarden.handlers``. See docs/ and DESIGN.md.
"""
