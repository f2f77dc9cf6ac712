"""Operator tooling: the `signalops` CLI, the embedded local stack and deployment files."""
