"""Clients of the systems services talk to: Kafka (publish/consume) and Redis (online store)."""
