"""Reading object files (``--from-file``): JSON and YAML streams, Lists, errors, limits."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from kproxy import objectdecode, objectfile
from kproxy.objectfile import ClusterObjects, ObjectFileError, load_object_file

SERVICE: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Service",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]},
}
SLICE: dict[str, Any] = {
    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
    "metadata": {"name": "web-1", "namespace": "default",
                 "labels": {"kubernetes.io/service-name": "web"}},
    "addressType": "IPv4",
    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    "endpoints": [{"addresses": ["10.244.1.2"], "conditions": {"ready": True}}],
}
NODE: dict[str, Any] = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}
DEPLOYMENT: dict[str, Any] = {"apiVersion": "apps/v1", "kind": "Deployment",
                              "metadata": {"name": "ignored"}}
LIST: dict[str, Any] = {"apiVersion": "v1", "kind": "List",
                        "items": [SERVICE, SLICE, NODE, DEPLOYMENT]}


def write(tmp_path: Path, content: str | bytes, name: str = "objects") -> str:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return str(path)


def summary(objects: ClusterObjects) -> tuple[list[Any], list[Any], list[Any], list[str]]:
    return objects.services, objects.endpoint_slices, objects.nodes, objects.skipped


@pytest.fixture
def pure_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyYAML as built without libyaml."""
    monkeypatch.delattr(yaml, "CSafeLoader")
    monkeypatch.setattr(objectdecode, "_warned_pure_loader", False)


def test_a_json_list_is_sorted_by_kind(tmp_path: Path) -> None:
    objects = load_object_file(write(tmp_path, json.dumps(LIST, indent=2)))
    assert summary(objects) == (
        [SERVICE], [SLICE], [NODE],
        ["document 1 items[3]: apiVersion 'apps/v1' kind 'Deployment'"],
    )


def test_the_same_objects_as_json_and_as_yaml_read_alike(tmp_path: Path) -> None:
    from_json = load_object_file(write(tmp_path, json.dumps(LIST), "a.json"))
    from_yaml = load_object_file(write(tmp_path, yaml.safe_dump(LIST), "a.yaml"))
    assert summary(from_json) == summary(from_yaml)
    assert from_json.services == [SERVICE]


def test_json_is_read_with_json_semantics(tmp_path: Path) -> None:
    # PyYAML (YAML 1.1) reads 1e3 as the string "1e3"; JSON as the number 1000.
    text = '{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}, "x": 1e3}'
    assert load_object_file(write(tmp_path, text)).nodes[0]["x"] == 1000.0


def test_concatenated_json_documents_are_a_stream(tmp_path: Path) -> None:
    # What `jq -c` or several `kubectl get -o json` print one after the other.
    text = f"{json.dumps(SERVICE)}\n{json.dumps(SLICE)}{json.dumps(NODE, indent=1)}\nnull\n"
    assert summary(load_object_file(write(tmp_path, text))) == ([SERVICE], [SLICE], [NODE], [])


def test_multi_document_yaml_with_a_list_and_single_objects(tmp_path: Path) -> None:
    text = "---\n" + yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [SERVICE]})
    text += "---\n# an empty document\n---\n" + yaml.safe_dump(SLICE)
    text += "---\n" + yaml.safe_dump(NODE)
    assert summary(load_object_file(write(tmp_path, text))) == ([SERVICE], [SLICE], [NODE], [])


def test_json_documents_inside_a_yaml_stream(tmp_path: Path) -> None:
    text = f"{json.dumps(SERVICE)}\n---\n{json.dumps(SLICE)}\n---\n{yaml.safe_dump(NODE)}"
    assert summary(load_object_file(write(tmp_path, text))) == ([SERVICE], [SLICE], [NODE], [])


def test_yaml_flow_mapping_that_is_not_json_is_read_as_yaml(tmp_path: Path) -> None:
    text = "{apiVersion: v1, kind: Node, metadata: {name: node-1}}\n"
    assert load_object_file(write(tmp_path, text)).nodes == [NODE]


def test_a_document_that_is_not_an_object_is_skipped(tmp_path: Path) -> None:
    objects = load_object_file(write(tmp_path, json.dumps([SERVICE]) + "\n" + '"text"'))
    assert summary(objects) == ([], [], [], ["document 1: not an object",
                                             "document 2: not an object"])


@pytest.mark.parametrize("content", ["", "\n  \n", "---\n", "# nothing\n"])
def test_an_empty_file_has_no_objects(tmp_path: Path, content: str) -> None:
    assert summary(load_object_file(write(tmp_path, content))) == ([], [], [], [])


def test_a_utf8_byte_order_mark_is_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbf" + json.dumps(LIST).encode())
    assert load_object_file(path).services == [SERVICE]
    path = write(tmp_path, b"\xef\xbb\xbf" + yaml.safe_dump(LIST).encode(), "b.yaml")
    assert load_object_file(path).services == [SERVICE]


def test_non_ascii_text_is_kept(tmp_path: Path) -> None:
    service = {**SERVICE, "metadata": {**SERVICE["metadata"],
                                       "annotations": {"note": "café ☕"}}}
    objects = load_object_file(write(tmp_path, json.dumps(service, ensure_ascii=False)))
    assert objects.services[0]["metadata"]["annotations"]["note"] == "café ☕"


@pytest.mark.parametrize("content", [b'{"kind": "Service", "x": "\xff"}', b"kind: \xfe\n"])
def test_non_utf8_bytes_are_an_error_naming_the_file(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path, content)
    with pytest.raises(ObjectFileError, match=r"not UTF-8 text \(invalid start byte at byte") \
            as raised:
        load_object_file(path)
    assert str(raised.value).startswith(f"{path}: ")


def test_json_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '{\n  "kind": "List",\n  "items": [1,, 2]\n}\n')
    with pytest.raises(ObjectFileError) as raised:
        load_object_file(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: not valid JSON (line 3 column 15: Expecting value)")
    assert "nor YAML (line 3 column 15:" in message


def test_json_error_in_the_second_document_of_a_stream(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps(SERVICE) + '\n{"kind": "Node",\n "metadata": }\n')
    with pytest.raises(ObjectFileError, match=r"not valid JSON \(line 3 column 14: "):
        load_object_file(path)


def test_yaml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "kind: List\nitems:\n- name: [unclosed\n- other\n")
    with pytest.raises(ObjectFileError) as raised:
        load_object_file(path)
    assert str(raised.value) == (
        f"{path}: not valid YAML: line 5 column 1: did not find expected ',' or ']' "
        "(while parsing a flow sequence at line 3 column 9)")


def test_yaml_control_character_is_an_error_with_its_position(tmp_path: Path) -> None:
    path = write(tmp_path, "kind: Service\nname: a\x00b\n")
    with pytest.raises(ObjectFileError,
                       match=r"not valid YAML: byte 21: control characters are not allowed"):
        load_object_file(path)


def test_duplicate_keys_keep_the_last_in_json_and_yaml(tmp_path: Path) -> None:
    # As the API server keeps the last of duplicate fields.
    json_text = ('{"apiVersion": "v1", "kind": "Node", "kind": "Service", '
                 '"metadata": {"name": "first", "name": "web", "namespace": "default"}}')
    yaml_text = ("apiVersion: v1\nkind: Node\nkind: Service\n"
                 "metadata: {name: first, name: web, namespace: default}\n")
    for name, text in (("a.json", json_text), ("a.yaml", yaml_text)):
        objects = load_object_file(write(tmp_path, text, name))
        assert objects.services == [{"apiVersion": "v1", "kind": "Service",
                                     "metadata": {"name": "web", "namespace": "default"}}]


def test_without_libyaml_yaml_is_read_by_the_pure_loader_with_one_warning(
    tmp_path: Path, pure_yaml: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    path = write(tmp_path, yaml.safe_dump(LIST))
    first = load_object_file(path)
    second = load_object_file(path)
    assert first.services == second.services == [SERVICE]
    warnings = [r.getMessage() for r in caplog.records if "libyaml" in r.getMessage()]
    assert len(warnings) == 1
    assert "pure-Python loader" in warnings[0]


def test_without_libyaml_json_needs_no_yaml_loader(
    tmp_path: Path, pure_yaml: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    assert load_object_file(write(tmp_path, json.dumps(LIST))).services == [SERVICE]
    assert "libyaml" not in caplog.text


def test_the_pure_loader_keeps_duplicate_keys_and_error_positions_alike(
    tmp_path: Path, pure_yaml: None
) -> None:
    objects = load_object_file(write(tmp_path, "apiVersion: v1\nkind: Deployment\nkind: Node\n"
                                               "metadata: {name: node-1}\n"))
    assert objects.nodes == [NODE]
    path = write(tmp_path, "kind: List\nitems:\n- name: [unclosed\n- other\n", "bad.yaml")
    with pytest.raises(ObjectFileError, match=r"not valid YAML: line 5 column 1: expected ','"):
        load_object_file(path)


def test_a_file_over_the_limit_is_refused(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(objectfile, "MAX_FILE_BYTES", 100)
    path = write(tmp_path, json.dumps(LIST))
    with pytest.raises(ObjectFileError, match=r"bytes is over the 100-byte limit") as raised:
        load_object_file(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert load_object_file(write(tmp_path, " " * 100, "small")).services == []


def test_a_stream_over_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # A character device reports no size: the limit holds on what is read.
    monkeypatch.setattr(objectfile, "MAX_FILE_BYTES", 100)
    with pytest.raises(ObjectFileError, match=r"/dev/zero: over the 100-byte limit"):
        load_object_file("/dev/zero")


def test_a_missing_file_and_a_directory_are_errors_naming_them(tmp_path: Path) -> None:
    with pytest.raises(ObjectFileError, match=r"nope\.json: No such file or directory"):
        load_object_file(str(tmp_path / "nope.json"))
    with pytest.raises(ObjectFileError, match=r"Is a directory"):
        load_object_file(str(tmp_path))
