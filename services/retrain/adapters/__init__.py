"""Edges of the retrain service: Ray Data (reading and joining) and the MLflow registry."""
