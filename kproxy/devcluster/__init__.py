"""The dev cluster: an in-memory Kubernetes API server and helpers for local runs and tests."""
