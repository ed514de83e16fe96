"""Nodes: cluster-scoped and mostly free-form; the proxy reads their labels and addresses."""

from __future__ import annotations

from kproxy.devcluster.apiserver.allocators import Reservations
from kproxy.devcluster.apiserver.fields import fields, top_level
from kproxy.devcluster.apiserver.kinds.base import KindRules
from kproxy.devcluster.apiserver.objects import JsonObject
from kproxy.devcluster.apiserver.patch import ListMerge
from kproxy.devcluster.apiserver.resources import NODES
from kproxy.devcluster.apiserver.validation import FieldError, invalid, parse_ip

NODE_FIELDS = top_level(
    spec=fields(
        "podCIDR",
        "podCIDRs",
        "providerID",
        "unschedulable",
        "taints",
        "configSource",
        "externalID",
    ),
    status=None,
)


class NodeRules(KindRules):
    known_fields = NODE_FIELDS
    patch_lists = {
        "spec.podCIDRs": ListMerge(),
        "status.addresses": ListMerge("type"),
        "status.conditions": ListMerge("type"),
    }

    def __init__(self) -> None:
        super().__init__(NODES)

    def prepare_create(self, body: JsonObject, reservations: Reservations) -> list[FieldError]:
        body.setdefault("spec", {})
        body.setdefault("status", {})
        return self.validate_status(body)

    def validate_status(self, body: JsonObject) -> list[FieldError]:
        errors: list[FieldError] = []
        addresses = (body.get("status") or {}).get("addresses") or []
        if not isinstance(addresses, list):
            return [invalid("status.addresses", addresses, "must be a list")]
        for index, address in enumerate(addresses):
            if not isinstance(address, dict):
                errors.append(invalid(f"status.addresses[{index}]", address, "must be an object"))
            elif (
                address.get("type") in ("InternalIP", "ExternalIP")
                and parse_ip(address.get("address")) is None
            ):
                errors.append(
                    invalid(
                        f"status.addresses[{index}].address",
                        address.get("address"),
                        "must be a valid IP address",
                    )
                )
        return errors
