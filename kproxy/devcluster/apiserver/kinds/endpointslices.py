"""EndpointSlices (discovery.k8s.io/v1): defaults and the validation that matters to a proxy.

Their lists are atomic in Kubernetes (a patch replaces ``endpoints`` or ``ports`` whole).
"""

from __future__ import annotations

from typing import Any

from kproxy.devcluster.apiserver.allocators import Reservations
from kproxy.devcluster.apiserver.fields import ListOf, fields, top_level
from kproxy.devcluster.apiserver.kinds.base import KindRules
from kproxy.devcluster.apiserver.objects import JsonObject
from kproxy.devcluster.apiserver.resources import ENDPOINT_SLICES
from kproxy.devcluster.apiserver.validation import (
    FieldError,
    dns_label_problems,
    dns_subdomain_problems,
    duplicate,
    invalid,
    is_int,
    not_supported,
    parse_ip,
    required,
)

ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")
PROTOCOLS = ("TCP", "UDP", "SCTP")
MAX_ENDPOINTS = 1000
MAX_PORTS = 100
MAX_ADDRESSES = 100


def _apply_defaults(body: JsonObject) -> None:
    ports = body.get("ports")
    if isinstance(ports, list):
        for port in ports:
            if isinstance(port, dict):
                port.setdefault("name", "")
                port.setdefault("protocol", "TCP")


def _address_problem(address_type: str, address: Any) -> str | None:
    if address_type == "FQDN":
        if not isinstance(address, str) or dns_subdomain_problems(address):
            return "must be a valid DNS subdomain"
        return None
    ip = parse_ip(address)
    version = 4 if address_type == "IPv4" else 6
    if ip is None or ip.version != version or str(ip) != address:
        return f"must be a valid {address_type} address"
    return None


def _validate_endpoints(body: JsonObject, address_type: str) -> list[FieldError]:
    errors: list[FieldError] = []
    endpoints = body.get("endpoints")
    if endpoints is None:
        return errors
    if not isinstance(endpoints, list):
        return [invalid("endpoints", endpoints, "must be a list")]
    if len(endpoints) > MAX_ENDPOINTS:
        errors.append(invalid("endpoints", len(endpoints), f"must have at most {MAX_ENDPOINTS}"))
    for index, endpoint in enumerate(endpoints):
        field = f"endpoints[{index}]"
        if not isinstance(endpoint, dict):
            errors.append(invalid(field, endpoint, "must be an object"))
            continue
        addresses = endpoint.get("addresses")
        if not isinstance(addresses, list) or not addresses:
            errors.append(required(f"{field}.addresses", "must contain at least 1 address"))
            continue
        if len(addresses) > MAX_ADDRESSES:
            errors.append(
                invalid(f"{field}.addresses", len(addresses), f"must have at most {MAX_ADDRESSES}")
            )
        if address_type in ADDRESS_TYPES:
            for position, address in enumerate(addresses):
                problem = _address_problem(address_type, address)
                if problem:
                    errors.append(invalid(f"{field}.addresses[{position}]", address, problem))
        conditions = endpoint.get("conditions")
        if conditions is not None:
            if not isinstance(conditions, dict):
                errors.append(invalid(f"{field}.conditions", conditions, "must be an object"))
            else:
                for name in ("ready", "serving", "terminating"):
                    value = conditions.get(name)
                    if value is not None and not isinstance(value, bool):
                        errors.append(
                            invalid(f"{field}.conditions.{name}", value, "must be a boolean")
                        )
        hostname = endpoint.get("hostname")
        if hostname is not None and (not isinstance(hostname, str) or dns_label_problems(hostname)):
            errors.append(invalid(f"{field}.hostname", hostname, "must be a valid DNS label"))
    return errors


def _validate_ports(body: JsonObject) -> list[FieldError]:
    errors: list[FieldError] = []
    ports = body.get("ports")
    if ports is None:
        return errors
    if not isinstance(ports, list):
        return [invalid("ports", ports, "must be a list")]
    if len(ports) > MAX_PORTS:
        errors.append(invalid("ports", len(ports), f"must have at most {MAX_PORTS}"))
    names: set[str] = set()
    for index, port in enumerate(ports):
        field = f"ports[{index}]"
        if not isinstance(port, dict):
            errors.append(invalid(field, port, "must be an object"))
            continue
        name = port.get("name", "")
        if not isinstance(name, str):
            errors.append(invalid(f"{field}.name", name, "must be a string"))
        elif name:
            errors.extend(invalid(f"{field}.name", name, p) for p in dns_label_problems(name))
        if name in names:
            errors.append(duplicate(f"{field}.name", name))
        if isinstance(name, str):
            names.add(name)
        protocol = port.get("protocol")
        if protocol not in PROTOCOLS:
            errors.append(not_supported(f"{field}.protocol", protocol, list(PROTOCOLS)))
        number = port.get("port")
        if number is not None and (not is_int(number) or not 1 <= number <= 65535):
            errors.append(
                invalid(f"{field}.port", number, "must be between 1 and 65535, inclusive")
            )
    return errors


ENDPOINT_SLICE_FIELDS = top_level(
    addressType=None,
    endpoints=ListOf(
        fields(
            "addresses",
            "hostname",
            "targetRef",
            "deprecatedTopology",
            "nodeName",
            "zone",
            "hints",
            conditions=fields("ready", "serving", "terminating"),
        )
    ),
    ports=ListOf(fields("name", "protocol", "port", "appProtocol")),
)


class EndpointSliceRules(KindRules):
    generation_fields = ("addressType", "endpoints", "ports")
    known_fields = ENDPOINT_SLICE_FIELDS

    def __init__(self) -> None:
        super().__init__(ENDPOINT_SLICES)

    def _validate(self, body: JsonObject) -> list[FieldError]:
        address_type = body.get("addressType")
        errors: list[FieldError] = []
        if not address_type:
            errors.append(required("addressType"))
        elif address_type not in ADDRESS_TYPES:
            errors.append(not_supported("addressType", address_type, list(ADDRESS_TYPES)))
        errors.extend(_validate_endpoints(body, str(address_type or "")))
        errors.extend(_validate_ports(body))
        return errors

    def prepare_create(self, body: JsonObject, reservations: Reservations) -> list[FieldError]:
        _apply_defaults(body)
        return self._validate(body)

    def prepare_update(
        self, body: JsonObject, old: JsonObject, reservations: Reservations
    ) -> list[FieldError]:
        _apply_defaults(body)
        errors = self._validate(body)
        if body.get("addressType") != old.get("addressType"):
            errors.append(invalid("addressType", body.get("addressType"), "field is immutable"))
        return errors
