"""Fuzzing model -> state -> plan -> render: valid, near-valid and garbage objects together.

Properties: nothing raises; the iptables full-sync payload and the userspace portal payload
rendered from the valid objects beside any garbage are byte-identical to those rendered from
the valid objects alone; an invalid update of a valid object leaves the valid version in force.
"""

from __future__ import annotations

from random import Random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pipeline import decode, feed, iptables_payloads, userspace_payloads
from profiles import profile
from strategies import (
    Cluster,
    garbage_objects,
    invalid_updates,
    json_text,
    json_values,
    near_valid_objects,
    valid_clusters,
    valid_node,
)

pytestmark = pytest.mark.fuzz


@st.composite
def malformed(draw: st.DrawFn, cluster: Cluster, count: int = 6) -> list[str]:
    """JSON texts of near-valid and garbage objects (some with duplicate keys)."""
    texts: list[str] = []
    for index in range(draw(st.integers(min_value=1, max_value=count))):
        if draw(st.booleans()):
            obj = draw(near_valid_objects(cluster, index))
        else:
            kind = draw(st.sampled_from(["Service", "EndpointSlice"]))
            obj = draw(garbage_objects(index, kind))
        decoys = draw(st.lists(json_values(max_text=50, max_list=10), max_size=3))
        texts.append(json_text(obj, decoys))
    return texts


def valid_texts(cluster: Cluster) -> list[str]:
    return [json_text(obj) for obj in [valid_node(), *cluster.services, *cluster.slices]]


def interleaved(valid: list[str], extra: list[str], random: Random) -> list[str]:
    """``extra`` spread among ``valid`` at random places, the valid ones kept in order."""
    stream = list(valid)
    for text in extra:
        stream.insert(random.randint(0, len(stream)), text)
    return stream


def rendered(texts: list[str]) -> tuple[dict[Any, str], dict[Any, str]]:
    fed = feed(decode(texts))
    return iptables_payloads(fed), userspace_payloads(fed)


@profile(ci_examples=400)
@given(st.data())
def test_garbage_beside_valid_objects_changes_no_payload(data: st.DataObject) -> None:
    cluster = data.draw(valid_clusters())
    valid = valid_texts(cluster)
    garbage = data.draw(malformed(cluster))
    stream = interleaved(valid, garbage, data.draw(st.randoms(use_true_random=False)))
    assert rendered(stream) == rendered(valid)


@profile(ci_examples=250)
@given(st.data())
def test_an_invalid_update_keeps_the_valid_version_in_force(data: st.DataObject) -> None:
    cluster = data.draw(valid_clusters())
    valid = valid_texts(cluster)
    update = data.draw(invalid_updates(cluster))
    # The update comes after the valid version of its object (the node comes first).
    names = [(obj["kind"], obj["metadata"]["name"]) for obj in decode(valid)]
    position = names.index((update["kind"], update["metadata"]["name"])) + 1
    after = data.draw(st.integers(min_value=position, max_value=len(valid)))
    stream = [*valid[:after], json_text(update), *valid[after:]]
    assert rendered(stream) == rendered(valid)


@profile(ci_examples=300)
@given(st.lists(json_values(), max_size=4), st.lists(json_values(), max_size=4))
def test_arbitrary_json_as_any_kind_never_raises(services: list[Any], slices: list[Any]
                                                 ) -> None:
    objects: list[Any] = [*services]
    objects += [{**value, "kind": "EndpointSlice"} if isinstance(value, dict) else value
                for value in slices]
    rendered([json_text(obj) for obj in objects])
