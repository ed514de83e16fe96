"""Pure object model: Kubernetes API objects parsed and validated into frozen records."""
