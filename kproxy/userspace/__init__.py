"""userspace mode: kproxy itself relays each service's connections to its endpoints.

The data plane (targets, balancer, limits, stats, relays, listeners) knows nothing of
Kubernetes objects; the proxier turns snapshots into listener updates.
"""
