"""Serve's edges: MLflow registry, model events and prediction log on Kafka, Redis reads."""
