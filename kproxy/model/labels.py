"""Which Services and EndpointSlices this proxy serves, by their labels (as kube-proxy's
informers select them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from kproxy.model.formats import is_label_value

HEADLESS_LABEL: Final = "service.kubernetes.io/headless"
SERVICE_PROXY_NAME_LABEL: Final = "service.kubernetes.io/service-proxy-name"


def service_selected(labels: Mapping[str, Any], proxy_name: str) -> bool:
    """Whether a Service or EndpointSlice with these labels is served by this proxy.

    kube-proxy lists both kinds with the selector ``label_selector("")``: objects labelled
    headless (any value) are for DNS only, and objects labelled with a service-proxy-name
    belong to another proxy. A proxy with a name serves exactly the objects labelled
    with that name.
    """
    if HEADLESS_LABEL in labels:
        return False
    if proxy_name:
        return bool(labels.get(SERVICE_PROXY_NAME_LABEL) == proxy_name)
    return SERVICE_PROXY_NAME_LABEL not in labels


def label_selector(proxy_name: str) -> str:
    """The server-side label selector equivalent to ``service_selected``.

    Requirements are sorted by key, as Kubernetes' own selector printing does. Raises
    ValueError for a name that is not a valid label value (it would corrupt the selector).
    """
    if not is_label_value(proxy_name):
        raise ValueError(f"invalid service proxy name {proxy_name!r}: must be a label value")
    if proxy_name:
        return f"!{HEADLESS_LABEL},{SERVICE_PROXY_NAME_LABEL}={proxy_name}"
    return f"!{HEADLESS_LABEL},!{SERVICE_PROXY_NAME_LABEL}"

