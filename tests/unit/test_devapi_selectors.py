"""Label and field selectors of the dev API server: grammar, validation and matching."""

from __future__ import annotations

import pytest

from kproxy.devcluster.apiserver.errors import ApiError
from kproxy.devcluster.apiserver.resources import NAMESPACES, NODES, SERVICES
from kproxy.devcluster.apiserver.selectors import parse_field_selector, parse_label_selector

LABELS = {"app": "web", "tier": "front", "version": "3"}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("", True),
        ("app=web", True),
        ("app==web", True),
        ("app=db", False),
        ("app!=db", True),
        ("app!=web", False),
        ("missing!=x", True),
        ("app in (web, db)", True),
        ("app in (db,cache)", False),
        ("app notin (db,cache)", True),
        ("app notin (web)", False),
        ("missing notin (x)", True),
        ("app", True),
        ("missing", False),
        ("!missing", True),
        ("!app", False),
        ("app=web,tier=front", True),
        ("app=web,tier=back", False),
        ("app=web, tier in (front,back), !missing", True),
        ("version>2", True),
        ("version<3", False),
        ("missing>1", False),
        ("empty=", False),
    ],
)
def test_label_selector_matches_as_the_api_defines(selector: str, matches: bool) -> None:
    assert parse_label_selector(selector).matches(LABELS) is matches


def test_label_selector_with_empty_value_matches_empty_label() -> None:
    assert parse_label_selector("flag=").matches({"flag": ""})
    assert not parse_label_selector("flag=").matches({})


@pytest.mark.parametrize(
    "selector",
    ["app in ()", "app in (a", "app=a b", "=a", "app notin", "a,,b", "app=-bad-", "app==x==y"],
)
def test_malformed_label_selectors_are_bad_requests(selector: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_label_selector(selector)
    assert caught.value.code == 400
    assert caught.value.reason == "BadRequest"


def test_label_selector_rejects_invalid_key() -> None:
    with pytest.raises(ApiError, match="unable to parse requirement"):
        parse_label_selector("Bad_Key-/x=1")


def test_field_selector_on_name_and_namespace() -> None:
    selector = parse_field_selector(
        "metadata.name=web,metadata.namespace!=kube-system", SERVICES.selectable_fields
    )
    assert selector.matches({"metadata.name": "web", "metadata.namespace": "default"})
    assert not selector.matches({"metadata.name": "web", "metadata.namespace": "kube-system"})
    assert not selector.matches({"metadata.name": "db", "metadata.namespace": "default"})
    assert selector.required_value("metadata.name") == "web"


def test_field_selector_double_equals_and_escapes() -> None:
    selector = parse_field_selector(r"metadata.name==a\,b", SERVICES.selectable_fields)
    assert selector.matches({"metadata.name": "a,b"})


def test_unsupported_field_label_is_a_bad_request() -> None:
    with pytest.raises(ApiError) as caught:
        parse_field_selector("spec.clusterIP=10.0.0.1", SERVICES.selectable_fields)
    assert caught.value.code == 400
    assert "field label not supported: spec.clusterIP" in caught.value.message


def test_cluster_scoped_kinds_have_their_own_fields() -> None:
    assert "metadata.namespace" not in NODES.selectable_fields
    selector = parse_field_selector("spec.unschedulable=false", NODES.selectable_fields)
    assert selector.matches(NODES.field_values({"metadata": {"name": "n1"}, "spec": {}}))
    assert not selector.matches(
        NODES.field_values({"metadata": {"name": "n1"}, "spec": {"unschedulable": True}})
    )
    phase = parse_field_selector("status.phase=Active", NAMESPACES.selectable_fields)
    assert phase.matches(
        NAMESPACES.field_values({"metadata": {"name": "x"}, "status": {"phase": "Active"}})
    )
