"""Ingest service: HTTP and signals.raw intake, validation, dead letters."""
