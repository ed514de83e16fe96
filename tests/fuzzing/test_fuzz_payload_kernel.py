"""Fuzzed payloads load in a real kernel: valid objects beside near-valid and garbage ones,
rendered as iptables mode's full sync and as userspace mode's portal rules, restored with
``iptables-legacy-restore`` and ``iptables-nft-restore`` (and the ip6tables ones) in one
network namespace that the whole module shares; every example starts from flushed tables."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pipeline import decode, feed, iptables_payloads, userspace_payloads
from profiles import profile
from strategies import valid_clusters
from test_fuzz_pipeline import interleaved, malformed, valid_texts

from kproxy.devcluster.netns import NetNamespace
from kproxy.model.types import IPFamily

pytestmark = [pytest.mark.kernel, pytest.mark.fuzz]

VARIANTS = ("legacy", "nft")
TOOLS = {IPFamily.IPV4: "iptables", IPFamily.IPV6: "ip6tables"}
# Restoring without --noflush empties every table it names: the state before each example.
EMPTY_TABLES = "*nat\nCOMMIT\n*filter\nCOMMIT\n"


@pytest.fixture(scope="module")
def namespace() -> Iterator[NetNamespace]:
    missing = [f"{TOOLS[f]}-{v}-restore" for f in TOOLS for v in VARIANTS
               if shutil.which(f"{TOOLS[f]}-{v}-restore") is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    with NetNamespace("fuzz") as built:
        yield built


def load(namespace: NetNamespace, family: IPFamily, payload: str) -> list[str]:
    """Problems loading ``payload`` as kproxy does (``--noflush``) with each variant."""
    problems: list[str] = []
    for variant in VARIANTS:
        restore = f"{TOOLS[family]}-{variant}-restore"
        namespace.run([restore], input=EMPTY_TABLES)
        done = namespace.run([restore, "--noflush"], input=payload, check=False)
        if done.returncode != 0:
            problems.append(f"{restore}: {done.stderr.strip()}\n{payload}")
    return problems


@profile(ci_examples=200)
@given(st.data())
def test_fuzzed_payloads_load_with_both_restore_variants(namespace: NetNamespace,
                                                         data: st.DataObject) -> None:
    cluster = data.draw(valid_clusters())
    valid = valid_texts(cluster)
    random = Random(data.draw(st.integers(min_value=0, max_value=2**32)))
    stream = interleaved(valid, data.draw(malformed(cluster)), random)
    fed = feed(decode(stream))
    problems: list[str] = []
    for mode, payloads in (("iptables", iptables_payloads(fed)),
                           ("userspace", userspace_payloads(fed))):
        for family, payload in payloads.items():
            problems += [f"{mode} {family}: {problem}"
                         for problem in load(namespace, family, payload)]
    assert not problems, "\n".join(problems)
