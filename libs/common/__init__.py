"""What every signalops service shares: settings, schemas, definitions, feature math,
clients (Kafka, Redis, offline store) and observability. Services never import each other.
"""
