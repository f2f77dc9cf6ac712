"""Ingest edges: the FastAPI app and the signals.raw consumer."""
