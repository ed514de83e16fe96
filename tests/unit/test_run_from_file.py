"""``kproxy run --from-file FILE --once``: objects from a file, one sync, a clean exit code."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kproxy.cli import main

OBJECTS = """\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: default}
  spec:
    clusterIP: 10.96.0.10
    ports: [{name: http, port: 80, targetPort: 8080}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
  addressType: IPv4
  ports: [{name: http, port: 8080, protocol: TCP}]
  endpoints:
  - addresses: [10.244.1.2]
  - addresses: [10.244.2.2]
    conditions: {ready: false}
---
apiVersion: v1
kind: Service
metadata: {name: broken, namespace: default}
spec:
  clusterIP: 10.96.0.300
  ports: [{port: 80}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
"""


def test_once_from_file_syncs_valid_objects_and_names_the_bad_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    objects = tmp_path / "objects.yaml"
    objects.write_text(OBJECTS)
    caplog.set_level(logging.INFO)
    code = main(["run", "--from-file", str(objects), "--once", "--proxy-mode", "iptables",
                 "--hostname-override", "node-1"])
    assert code == 0
    text = caplog.text
    assert "1 service ports, 2 endpoints" in text
    assert "default/web:http/TCP 10.96.0.10 port 80/TCP -> 10.244.1.2:8080" in text
    assert "Service default/broken: skipped object spec.clusterIP" in text
    assert "kind 'Deployment'" in text


def test_once_from_missing_file_fails_with_the_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "nope.yaml"
    code = main(["run", "--from-file", str(missing), "--once", "--hostname-override", "n"])
    assert code == 1
    assert str(missing) in caplog.text


def test_once_from_file_that_is_not_yaml_fails_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [unclosed\n")
    code = main(["run", "--from-file", str(bad), "--once", "--hostname-override", "n"])
    assert code == 1
    assert "not valid YAML" in caplog.text
