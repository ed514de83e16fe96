"""Labs and namespaces are always deleted, and the host's own network is never touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kproxy.devcluster import lab as lab_module
from kproxy.devcluster.lab import Lab
from kproxy.devcluster.netns import (
    NamespaceError,
    NetNamespace,
    cleanup_stale,
    list_namespaces,
    live_namespaces,
    random_tag,
    session_prefix,
    wait_for_line,
)

pytestmark = pytest.mark.kernel

CHILD_TIMEOUT = 30.0


def host_network_state() -> dict[str, str]:
    """What the host namespace looks like, as text that must not change."""
    views = ("-o link", "-o addr", "route", "-6 route", "rule", "-6 rule")
    return {view: subprocess.run(["ip", *view.split()], capture_output=True, text=True,
                                 check=True).stdout for view in views}


def host_sysctl(key: str) -> str:
    return Path("/proc/sys", *key.split(".")).read_text().strip()


def still_present(names: list[str]) -> list[str]:
    existing = set(list_namespaces())
    return [name for name in names if name in existing]


# --- the host is left alone ----------------------------------------------------------------


def test_lab_lifetime_leaves_the_host_network_unchanged() -> None:
    before = host_network_state()
    forwarding = host_sysctl("net.ipv4.ip_forward"), host_sysctl("net.ipv6.conf.all.forwarding")
    with Lab(nodes=2, ipv6=True) as lab:
        pods = [lab.add_pod(node, f"p{node.index}") for node in lab.nodes]
        lab.start_servers(pods)
        [result] = pods[0].probe("tcp", pods[1].ip, 8080)
        assert result.ok, result
        during = host_network_state()
    after = host_network_state()
    assert during == before
    assert after == before
    assert (host_sysctl("net.ipv4.ip_forward"),
            host_sysctl("net.ipv6.conf.all.forwarding")) == forwarding


# --- labs are always deleted ---------------------------------------------------------------


def test_lab_deletes_all_its_namespaces() -> None:
    with Lab(nodes=2) as lab:
        lab.add_pod(1, "a")
        lab.add_pod(2, "b").start_server()
        names = lab.namespace_names()
        assert len(names) == 6  # fabric, 2 nodes, outside, 2 pods
        assert still_present(names) == names
    assert still_present(names) == []
    assert not set(names) & set(live_namespaces())


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_lab_is_deleted_when_the_body_raises(error: type[BaseException]) -> None:
    names: list[str] = []
    with pytest.raises(error), Lab(nodes=1) as lab:
        lab.add_pod(1, "a").start_server()
        names = lab.namespace_names()
        raise error("boom")
    assert names
    assert still_present(names) == []


def test_failed_build_deletes_what_was_created(monkeypatch: pytest.MonkeyPatch) -> None:
    tag = random_tag()
    monkeypatch.setattr(lab_module, "node_commands", lambda *_: ["link add bogus type nonsense"])
    with pytest.raises(NamespaceError):
        Lab(nodes=2, tag=tag).build()
    assert [n for n in list_namespaces() if n.startswith(f"{session_prefix()}{tag}-")] == []


def test_failed_pod_leaves_no_namespace(lab: Lab) -> None:
    lab.add_pod(1, "dup")
    with pytest.raises(ValueError):
        lab.add_pod(2, "dup")
    with pytest.raises(ValueError):
        lab.add_pod(2, "bad name")
    assert sum(name.endswith("-dup") for name in lab.namespace_names()) == 1


# --- single namespaces ---------------------------------------------------------------------


def test_namespace_basics_and_isolated_sysctl() -> None:
    host_forwarding = host_sysctl("net.ipv4.ip_forward")
    with NetNamespace("basics") as ns:
        assert ns.name.startswith(session_prefix()) and ns.name.endswith("-basics")
        assert "state UNKNOWN" in ns.ip("link", "show", "lo")  # lo is up
        ns.sysctl("net.ipv4.ip_forward", 1 - int(host_forwarding))
        assert ns.read_sysctl("net.ipv4.ip_forward") == str(1 - int(host_forwarding))
        assert ns.run(["ip", "-o", "link"]).stdout.count("\n") == 1  # only lo in here
        with pytest.raises(NamespaceError):
            ns.run(["false"])
        assert ns.run(["false"], check=False).returncode == 1
    assert host_sysctl("net.ipv4.ip_forward") == host_forwarding
    assert still_present([ns.name]) == []


def test_processes_in_the_namespace_are_killed_on_exit() -> None:
    with NetNamespace("procs") as ns:
        tracked = ns.popen(["sleep", "300"])
        # Started behind the namespace's back: still killed, it lives in our namespace.
        untracked = subprocess.Popen(ns.exec_argv(["sleep", "300"]))
        ready = ns.popen_python("kproxy.devcluster.podserver", "--tcp", "8080",
                                stdout=subprocess.PIPE)
        wait_for_line(ready, "READY", CHILD_TIMEOUT)
    assert tracked.poll() is not None
    assert untracked.wait(timeout=CHILD_TIMEOUT) == -signal.SIGKILL
    assert ready.poll() is not None


def test_veth_pair_joins_two_namespaces_directly() -> None:
    with NetNamespace("va") as a, NetNamespace("vb") as b:
        a.add_veth("x0", b, "y0")
        a.ip_batch(["addr add 192.0.2.1/24 dev x0", "link set x0 up"])
        b.ip_batch(["addr add 192.0.2.2/24 dev y0", "link set y0 up"])
        assert "x0" in a.ip("-o", "link") and "y0" in b.ip("-o", "link")
        server = a.popen_python("kproxy.devcluster.podserver", "--name", "a", "--udp", "7",
                                stdout=subprocess.PIPE)
        wait_for_line(server, "READY", CHILD_TIMEOUT)
        answer = b.run_python("kproxy.devcluster.probe", "udp", "192.0.2.1", "7").stdout
        assert '"pod": "a"' in answer and '"client": "192.0.2.2:' in answer


def test_cleanup_stale_only_touches_this_process_leftovers() -> None:
    tag = random_tag()
    leftover = f"{session_prefix()}{tag}-leftover"
    foreign = f"kp-0-{tag}-foreign"  # pid 0: never a live run, but not ours either
    for name in (leftover, foreign):
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        with NetNamespace("alive", tag=tag) as alive:
            deleted = cleanup_stale()
            assert leftover in deleted
            assert alive.name not in deleted
            assert still_present([leftover, foreign, alive.name]) == [foreign, alive.name]
        with pytest.raises(ValueError):
            cleanup_stale("kp-")
    finally:
        for name in still_present([leftover, foreign]):
            subprocess.run(["ip", "netns", "delete", name], check=False)


# --- the process dies ----------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import signal, sys
    from pathlib import Path
    from kproxy.devcluster.lab import Lab

    mode, names_file = sys.argv[1], Path(sys.argv[2])

    def report(lab):
        names_file.write_text("\\n".join(lab.namespace_names()))
        print("READY", flush=True)

    if mode == "registry":  # no context manager: only the module registry can clean up
        lab = Lab(nodes=1, outside=False).build()
        lab.add_pod(1, "a").start_server()
        report(lab)
        if len(sys.argv) > 3:
            sys.exit(0)
        signal.pause()
    else:
        with Lab(nodes=1, outside=False) as lab:
            lab.add_pod(1, "a").start_server()
            report(lab)
            signal.pause()
""")


@pytest.mark.parametrize(("mode", "how"), [
    ("registry", signal.SIGTERM),
    ("context", signal.SIGINT),
    ("context", signal.SIGTERM),
    ("context", signal.SIGHUP),
    ("registry", None),  # plain interpreter exit
])
def test_namespaces_are_deleted_when_the_process_is_stopped(
        tmp_path: Path, mode: str, how: signal.Signals | None) -> None:
    names_file = tmp_path / "names"
    argv = [sys.executable, "-c", CHILD, mode, str(names_file)]
    if how is None:
        argv.append("exit")
    child = subprocess.Popen(argv, stdout=subprocess.PIPE)
    try:
        wait_for_line(child, "READY", CHILD_TIMEOUT)
        names = names_file.read_text().split()
        assert len(names) == 3
        if how is not None:
            os.kill(child.pid, how)
        child.wait(timeout=CHILD_TIMEOUT)
        assert still_present(names) == []
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
        if names_file.exists():
            for name in still_present(names_file.read_text().split()):
                subprocess.run(["ip", "netns", "delete", name], check=False)


def test_name_clash_never_deletes_the_existing_namespace() -> None:
    tag = random_tag()
    with NetNamespace("same", tag=tag) as first:
        with pytest.raises(NamespaceError):
            NetNamespace("same", tag=tag).create()
        assert still_present([first.name]) == [first.name]


def test_only_per_namespace_sysctls_can_be_set() -> None:
    with NetNamespace("sysctl") as ns, pytest.raises(ValueError):
        ns.sysctl("kernel.pid_max", 4096)
