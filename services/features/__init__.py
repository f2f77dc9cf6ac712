"""Features service: signals.valid -> per-entity windowed features in Redis and Parquet.

Its edges are the shared clients in libs/common (Kafka, the Redis feature store, the
offline store); the pure part is core/updates.py.
"""
