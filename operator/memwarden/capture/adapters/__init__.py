"""Capture adapters: evidence bundles read from files (``memwarden analyze`` and the worker)
and the analysis worker process."""
