"""Talking to the Kubernetes API: transport (auth, TLS, raw JSON) and list+watch informers."""
