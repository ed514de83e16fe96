"""kproxy: a Kubernetes service proxy, a drop-in replacement for kube-proxy."""

__version__ = "0.1.0"
