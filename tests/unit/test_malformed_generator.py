"""The malformed-object generator the live tests and the soak use: every object it makes is
one the model refuses (or, for an unusable slice port, ignores), so a count of rejections
can be checked against the number written."""

from __future__ import annotations

import pytest

from kproxy.devcluster.malformed import malformed_objects
from kproxy.model.endpointslice import parse_endpoint_slice
from kproxy.model.service import parse_service


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_generated_object_is_rejected_and_adds_no_endpoint(seed: int) -> None:
    for obj in malformed_objects(2_000, seed=seed, service_names=("steady",)):
        if obj["kind"] == "Service":
            parsed = parse_service(obj)
            assert parsed.rejections, obj
            assert parsed.value is None or parsed.value.ports == (), obj
        else:
            sliced = parse_endpoint_slice(obj)
            assert sliced.rejections, obj
            # A slice kept with a port ignored has no port, so it serves nothing.
            assert sliced.value is None or sliced.value.ports == (), obj


def test_the_same_seed_gives_the_same_objects() -> None:
    assert list(malformed_objects(300, seed=7)) == list(malformed_objects(300, seed=7))
    assert list(malformed_objects(300, seed=7)) != list(malformed_objects(300, seed=8))
