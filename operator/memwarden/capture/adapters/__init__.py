"""Capture adapters: reading evidence bundles from files and the analysis worker process."""
