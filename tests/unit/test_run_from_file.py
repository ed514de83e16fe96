"""Objects from a file (``--from-file``), without touching any kernel: ``kproxy rules`` prints
what a full sync would write; ``kproxy run --once`` fails cleanly on a bad file before it opens
a backend. (``run --once`` programming a kernel is tested in network namespaces.)"""

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


def test_rules_prints_the_payload_and_names_the_bad_object(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    objects = tmp_path / "objects.yaml"
    objects.write_text(OBJECTS)
    caplog.set_level(logging.INFO)
    assert main(["rules", "--from-file", str(objects), "--hostname-override", "node-1"]) == 0
    out = capsys.readouterr().out
    assert "*nat" in out and "*filter" in out
    # The ready endpoint is DNATed to; the not-ready one is not.
    assert "-j DNAT --to-destination 10.244.1.2:8080" in out
    assert "10.244.2.2:8080" not in out
    assert '-A KPROXY-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment ' \
        '"default/web:http cluster IP" -m tcp --dport 80 -j KPROXY-SVC-' in out
    assert "# IPv6" in out and "ip6tables -t nat -I PREROUTING" in out
    assert "Service default/broken: skipped object spec.clusterIP" in caplog.text
    assert "kind 'Deployment'" in caplog.text


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
