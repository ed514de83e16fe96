"""deploy/: every manifest valid for Kubernetes 1.33 (offline, strict schemas), the
DaemonSet's command line and the ConfigMap's configuration accepted by kproxy's own loader,
and the ClusterRole granting exactly the calls kproxy's informers make."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kproxy.config import ProxyConfig
from kproxy.config.resolve import parse_run_config
from kproxy.sources import resource_specs

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES_VERSION = "1.33.0"
MANIFESTS = ("rbac.yaml", "configmap.yaml", "daemonset.yaml", "smoke.yaml",
             "beside-kube-proxy/configmap.yaml", "beside-kube-proxy/daemonset.yaml")
# directory -> (health port, metrics port); beside kube-proxy, ports it does not hold
VARIANTS = {"": (10256, 10249), "beside-kube-proxy/": (10356, 10349)}
NODE = "node-a"


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def only(name: str, kind: str) -> dict[str, Any]:
    [found] = [d for d in documents(name) if d["kind"] == kind]
    return found


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_is_valid_in_strict_mode(name: str) -> None:
    for document in documents(name):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_strict_validation_rejects_an_unknown_field() -> None:
    daemonset = copy.deepcopy(only("daemonset.yaml", "DaemonSet"))
    daemonset["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, KUBERNETES_VERSION, strict=True)


def container(directory: str) -> dict[str, Any]:
    pod = only(f"{directory}daemonset.yaml", "DaemonSet")["spec"]["template"]["spec"]
    [kproxy] = pod["containers"]
    return dict(kproxy)


def loaded_config(directory: str, tmp_path: Path) -> ProxyConfig:
    """What ``kproxy run`` makes of the DaemonSet's command line and ConfigMap on a node."""
    kproxy = container(directory)
    assert kproxy["command"] == ["kproxy", "run"]
    mount = next(m for m in kproxy["volumeMounts"] if m["name"] == "kproxy-config")
    data = only(f"{directory}configmap.yaml", "ConfigMap")["data"]
    for key, text in data.items():
        (tmp_path / key).write_text(text)
    args = [
        arg.replace("$(NODE_NAME)", NODE).replace(mount["mountPath"], str(tmp_path))
        for arg in kproxy["args"]
    ]
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} \
        in kproxy["env"]
    return parse_run_config(args, gethostname=lambda: "not-the-node")


@pytest.mark.parametrize("directory", list(VARIANTS))
def test_daemonset_and_configmap_parse_with_kproxys_loader(directory: str, tmp_path: Path) -> None:
    config = loaded_config(directory, tmp_path)
    port, metrics_port = VARIANTS[directory]
    assert config.hostname == NODE
    assert config.proxy_mode.value == "iptables"
    assert config.healthz_bind_address == f"0.0.0.0:{port}"
    assert config.metrics_bind_address == f"127.0.0.1:{metrics_port}"
    assert config.cluster_cidrs == ("10.244.0.0/16",)
    assert config.sync_period == 30.0 and config.min_sync_period == 1.0
    assert config.service_proxy_name == ("kproxy" if directory else "")
    # Every field of the file has an effect: nothing reported as ignored.
    assert [n.message for n in config.notices if n.level >= 30] == []
    # The kubeconfig named by the file is the ConfigMap's, under the mount path.
    assert config.kubeconfig == "/var/lib/kproxy/kubeconfig.conf"


@pytest.mark.parametrize("directory", list(VARIANTS))
def test_kubeconfig_reaches_the_control_plane_with_the_service_account(directory: str) -> None:
    data = only(f"{directory}configmap.yaml", "ConfigMap")["data"]
    kubeconfig = yaml.safe_load(data["kubeconfig.conf"])
    [cluster] = kubeconfig["clusters"]
    # The control plane's own name, never the kubernetes Service's ClusterIP (kproxy is
    # what makes ClusterIPs work).
    assert cluster["cluster"]["server"] == "https://kind-control-plane:6443"
    [user] = kubeconfig["users"]
    assert user["user"]["tokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"


@pytest.mark.parametrize("directory", list(VARIANTS))
def test_daemonset_runs_like_kube_proxy(directory: str) -> None:
    daemonset = only(f"{directory}daemonset.yaml", "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    kproxy = container(directory)
    port, _metrics_port = VARIANTS[directory]
    assert daemonset["metadata"]["namespace"] == "kube-system"
    assert daemonset["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert pod["hostNetwork"] is True
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["serviceAccountName"] == only("rbac.yaml", "ServiceAccount")["metadata"]["name"]
    assert kproxy["securityContext"] == {"privileged": True}
    assert kproxy["livenessProbe"]["httpGet"] == {"path": "/livez", "port": port}
    assert kproxy["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in kproxy["volumeMounts"]}
    assert volumes["xtables-lock"]["hostPath"] == {"path": "/run/xtables.lock",
                                                   "type": "FileOrCreate"}
    assert mounts["xtables-lock"]["mountPath"] == "/run/xtables.lock"
    assert volumes["lib-modules"]["hostPath"]["path"] == "/lib/modules"
    assert mounts["lib-modules"] == {"name": "lib-modules", "mountPath": "/lib/modules",
                                     "readOnly": True}
    configmap = only(f"{directory}configmap.yaml", "ConfigMap")["metadata"]["name"]
    assert volumes["kproxy-config"]["configMap"]["name"] == configmap


def granted(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_cluster_role_grants_exactly_what_kproxy_calls() -> None:
    # kproxy's API calls: one informer per resource spec, each a paged list then watches.
    called = set()
    for spec in resource_specs(NODE, proxy_name=""):
        segments = spec.path.strip("/").split("/")
        group = "" if segments[0] == "api" else segments[1]
        called |= {(group, segments[-1], "list"), (group, segments[-1], "watch")}
    assert called == {("", "services", "list"), ("", "services", "watch"),
                      ("discovery.k8s.io", "endpointslices", "list"),
                      ("discovery.k8s.io", "endpointslices", "watch"),
                      ("", "nodes", "list"), ("", "nodes", "watch")}
    role = only("rbac.yaml", "ClusterRole")
    assert granted(role["rules"]) == called
    assert all(not rule.get("resourceNames") and not rule.get("nonResourceURLs")
               for rule in role["rules"])
    binding = only("rbac.yaml", "ClusterRoleBinding")
    account = only("rbac.yaml", "ServiceAccount")["metadata"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["name"],
                                    "namespace": account["namespace"]}]


@pytest.mark.parametrize(("directory", "mode"), [("", "none"), ("beside-kube-proxy/", "iptables")])
def test_kind_configs(directory: str, mode: str) -> None:
    kind_config = yaml.safe_load((DEPLOY / f"{directory}kind-config.yaml").read_text())
    assert kind_config["kind"] == "Cluster"
    assert kind_config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert kind_config["networking"] == {"kubeProxyMode": mode}
