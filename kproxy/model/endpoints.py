"""Merging the EndpointSlices of one service into endpoints per service port.

kube-proxy's EndpointSliceCache semantics (1.33):

- every slice port (name, protocol) is one service port; an endpoint of the slice becomes
  ``ip:port`` with that slice port's number. Two ports of one slice with the same name
  and protocol both contribute, as they do in kube-proxy;
- one ``ip:port`` appears once per service port. When an endpoint moves between slices,
  or a pod IP is reused before the old pod is gone, several slices list it: kube-proxy
  then prefers a non-terminating copy over a terminating one, and otherwise keeps
  whichever it saw last in its (random) map order. We keep the same preference and make
  the rest deterministic: ready before not ready, serving before not serving, then a
  fixed order over the remaining fields. The result therefore does not depend on the
  order of the slices or on a slice being given twice;
- endpoints are sorted by their ``ip:port`` string, as kube-proxy sorts them;
- service ports without endpoints are left out, as kube-proxy leaves them out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeAlias

from kproxy.model.types import Endpoint, EndpointSliceInfo, IPFamily, Protocol, ServicePortName

_PortKey: TypeAlias = tuple[str, str, str, Protocol]  # namespace, service, port name, protocol
_Preference: TypeAlias = tuple[
    bool, bool, bool, bool, str, bool, str, bool, tuple[str, ...], bool, tuple[str, ...]
]


def merge_endpoint_slices(
    slices: Iterable[EndpointSliceInfo],
) -> dict[ServicePortName, tuple[Endpoint, ...]]:
    """Endpoints per service port, merged from the slices of one service."""
    buckets: dict[_PortKey, dict[str, Endpoint]] = {}
    for endpoint_slice in slices:
        endpoints = endpoint_slice.endpoints
        if not endpoints:
            continue
        bracketed = endpoint_slice.address_type is IPFamily.IPV6
        namespace, service = endpoint_slice.namespace, endpoint_slice.service_name
        for slice_port in endpoint_slice.ports:
            key = (namespace, service, slice_port.name, slice_port.protocol)
            bucket = buckets.get(key)
            if bucket is None:
                bucket = buckets[key] = {}
            port = slice_port.port
            suffix = f":{port}"
            for endpoint in endpoints:
                ip = endpoint.ip
                address = f"[{ip}]{suffix}" if bracketed else ip + suffix
                current = bucket.get(address)
                if current is None or _preference(endpoint) > _preference(current):
                    bucket[address] = Endpoint(
                        ip,
                        port,
                        endpoint.ready,
                        endpoint.serving,
                        endpoint.terminating,
                        endpoint.node_name,
                        endpoint.zone,
                        endpoint.zone_hints,
                        endpoint.node_hints,
                    )
    return {
        ServicePortName(*key): tuple(bucket[address] for address in sorted(bucket))
        for key, bucket in buckets.items()
        if bucket
    }


def _preference(endpoint: Endpoint) -> _Preference:
    """A total order over everything but ip and port: the larger copy of a duplicate wins.

    The first three fields are the behaviour users see (kube-proxy's non-terminating
    first, then usable before unusable); the rest only make the choice deterministic.
    """
    return (
        not endpoint.terminating,
        endpoint.ready,
        endpoint.serving,
        endpoint.node_name is not None,
        endpoint.node_name or "",
        endpoint.zone is not None,
        endpoint.zone or "",
        endpoint.zone_hints is not None,
        tuple(sorted(endpoint.zone_hints or ())),
        endpoint.node_hints is not None,
        tuple(sorted(endpoint.node_hints or ())),
    )
