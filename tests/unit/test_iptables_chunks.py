"""Full syncs in several transactions (iptables-nft at scale) and reading the kernel's tables
in one pass: chunk order checked by the validating fake, jump detection, nft listings."""

from __future__ import annotations

import pytest

from kproxy.iptables.backend import RestoreError
from kproxy.iptables.chunks import ChunkPolicy, leaves_first, render_full_chunked
from kproxy.iptables.cleanup import cleanup
from kproxy.iptables.fake import FakeBackend, FakeIptables
from kproxy.iptables.kernelstate import (
    KernelTable,
    listed_rules,
    missing_jumps,
    parse_nft_chains,
    scan_save,
)
from kproxy.iptables.restore import join_payloads, parse_restore, render_full
from kproxy.iptables.ruleset import BuiltinJump, Chain, Ruleset, Table, TableRules
from kproxy.model.types import IPFamily

V4 = IPFamily.IPV4
PORTALS = BuiltinJump(Table.NAT, "PREROUTING",
                      '-m comment --comment "kproxy service portals" -j KPROXY-SERVICES')
OUTPUT = BuiltinJump(Table.NAT, "OUTPUT",
                     '-m comment --comment "kproxy service portals" -j KPROXY-SERVICES',
                     first=False)


def big_ruleset(services: int, endpoints: int = 3, generation: int = 0) -> Ruleset:
    """Services of SVC -> SEP chains, dispatched through two bucket chains under the root."""
    nat: dict[str, Chain] = {}
    buckets: dict[str, list[str]] = {"KPROXY-B-0": [], "KPROXY-B-1": []}
    for index in range(services):
        seps = [f"KPROXY-SEP-{index}-{e}" for e in range(endpoints)]
        for e, sep in enumerate(seps):
            nat[sep] = Chain(sep, (f"-p tcp -m tcp -j DNAT --to-destination "
                                   f"10.244.{generation}.{e}:80",))
        svc = f"KPROXY-SVC-{index}"
        nat[svc] = Chain(svc, tuple(f"-j {sep}" for sep in seps))
        buckets[f"KPROXY-B-{index % 2}"].append(
            f"-d 10.96.0.{index}/32 -p tcp -m tcp --dport 80 -j {svc}")
    for name, rules in buckets.items():
        nat[name] = Chain(name, tuple(rules))
    nat["KPROXY-SERVICES"] = Chain("KPROXY-SERVICES", tuple(f"-j {b}" for b in buckets))
    filter_chains = {"KPROXY-FIREWALL": Chain("KPROXY-FIREWALL")}
    return Ruleset(V4, {Table.NAT: TableRules(Table.NAT, nat),
                        Table.FILTER: TableRules(Table.FILTER, filter_chains)},
                   jumps=(PORTALS, OUTPUT))


def apply_chunks(fake: FakeIptables, ruleset: Ruleset, chunk: int,
                 existing: dict[Table, set[str]] | None = None) -> list[dict[Table, str]]:
    jumps = missing_jumps(ruleset.jumps, FakeBackend(fake).read_tables(V4))
    steps = list(render_full_chunked(ruleset, existing or {}, jumps, chunk))
    for payloads in steps:
        fake.apply_restore(V4, join_payloads(payloads))
    return steps


def one_transaction(ruleset: Ruleset) -> FakeIptables:
    fake = FakeIptables(families=(V4,))
    fake.apply_restore(V4, join_payloads(render_full(ruleset)))
    FakeBackend(fake).ensure_jumps(V4, ruleset.jumps)
    return fake


def test_leaves_come_before_every_chain_that_jumps_to_them() -> None:
    ruleset = big_ruleset(20)
    chains = ruleset.tables[Table.NAT].chains
    order = [chain.name for chain in leaves_first(chains)]
    assert sorted(order) == sorted(chains)
    position = {name: index for index, name in enumerate(order)}
    for name, chain in chains.items():
        for rule in chain.rules:
            target = rule.rsplit("-j ", 1)[-1]
            if target in chains:
                assert position[target] < position[name], (target, name)
    assert order[-1] == "KPROXY-SERVICES"


def test_a_loop_of_jumps_is_refused() -> None:
    chains = {"KPROXY-A": Chain("KPROXY-A", ("-j KPROXY-B",)),
              "KPROXY-B": Chain("KPROXY-B", ("-j KPROXY-A",))}
    with pytest.raises(ValueError, match="loop"):
        leaves_first(chains)


def test_chunks_load_into_the_strict_fake_and_equal_one_transaction() -> None:
    ruleset = big_ruleset(30)
    strict = FakeIptables(families=(V4,), complete_targets=True)
    steps = apply_chunks(strict, ruleset, chunk=10)
    nat_steps = [parse_restore(step[Table.NAT]) for step in steps if Table.NAT in step]
    # Declarations first, then groups of at most 10 chains, each chain written whole.
    assert all(c.op.value == "declare" for c in nat_steps[0][0].commands)
    for [transaction] in nat_steps[1:]:
        assert len({c.chain for c in transaction.commands if c.op.value == "declare"}) <= 10
    expected = one_transaction(ruleset)
    for table in (Table.NAT, Table.FILTER):
        assert strict.save(V4, table) == expected.save(V4, table)


def test_a_resync_in_chunks_rewrites_existing_chains_and_drops_stale_ones() -> None:
    strict = FakeIptables(families=(V4,), complete_targets=True)
    old = big_ruleset(30)
    apply_chunks(strict, old, chunk=10)
    new = big_ruleset(20, generation=1)  # ten services gone, every endpoint moved
    apply_chunks(strict, new, chunk=10, existing={Table.NAT: strict.kproxy_chains(V4, Table.NAT)})
    expected = one_transaction(new)
    assert strict.save(V4, Table.NAT) == expected.save(V4, Table.NAT)


def test_the_strict_fake_rejects_a_jump_to_a_chain_not_yet_written() -> None:
    strict = FakeIptables(families=(V4,), complete_targets=True)
    strict.apply_restore(V4, "*nat\n:KPROXY-SVC-X - [0:0]\n:KPROXY-SEP-X - [0:0]\nCOMMIT\n")
    with pytest.raises(RestoreError, match="only declared"):
        strict.apply_restore(V4, "*nat\n:KPROXY-SVC-X - [0:0]\n-A KPROXY-SVC-X -j KPROXY-SEP-X\n"
                                 "COMMIT\n")
    # Once the target is written (even empty), jumping to it is fine.
    strict.apply_restore(V4, "*nat\n:KPROXY-SEP-X - [0:0]\n-A KPROXY-SEP-X -j RETURN\nCOMMIT\n")
    strict.apply_restore(V4, "*nat\n:KPROXY-SVC-X - [0:0]\n-A KPROXY-SVC-X -j KPROXY-SEP-X\n"
                             "COMMIT\n")
    assert strict.rules(V4, Table.NAT, "KPROXY-SVC-X") == ("-j KPROXY-SEP-X",)


def test_the_strict_fake_rejects_roots_first_chunks_and_split_chains() -> None:
    ruleset = big_ruleset(12)
    steps = list(render_full_chunked(ruleset, {}, ruleset.jumps, 10))
    declarations, groups = steps[0], [s for s in steps[1:] if Table.NAT in s]
    strict = FakeIptables(families=(V4,), complete_targets=True)
    strict.apply_restore(V4, declarations[Table.NAT])
    with pytest.raises(RestoreError, match="only declared"):
        strict.apply_restore(V4, groups[-1][Table.NAT])  # the roots before their targets
    appended = "*nat\n-A KPROXY-SEP-0-0 -j RETURN\nCOMMIT\n"
    with pytest.raises(RestoreError, match="across transactions"):
        strict.apply_restore(V4, appended)
    FakeIptables(families=(V4,)).apply_restore(V4, "*nat\n:KPROXY-SEP-0-0 - [0:0]\nCOMMIT\n"
                                                   + appended)  # fine when not strict


def test_chunk_policy_applies_above_its_threshold() -> None:
    ruleset = big_ruleset(10)  # 43 nat chains
    assert ChunkPolicy(threshold_chains=42, chunk_chains=5).applies(ruleset)
    assert not ChunkPolicy(threshold_chains=43, chunk_chains=5).applies(ruleset)
    with pytest.raises(ValueError):
        ChunkPolicy(chunk_chains=0)


def test_a_chunked_cleanup_removes_everything_in_steps() -> None:
    backend = FakeBackend(FakeIptables(families=(V4,), complete_targets=True),
                          chunking=ChunkPolicy(threshold_chains=20, chunk_chains=10))
    ruleset = big_ruleset(15)
    apply_chunks(backend.iptables, ruleset, chunk=10)
    backend.iptables.apply_restore(V4, "*nat\n-A PREROUTING -s 192.0.2.1/32 -j ACCEPT\nCOMMIT\n")
    report = cleanup(backend, [V4])
    assert report.ok and len(report.deleted_chains) == len(ruleset.tables[Table.NAT].chains) + 1
    assert len([p for _, p in backend.payloads if Table.NAT in p]) > 3
    assert not backend.iptables.kproxy_chains(V4, Table.NAT)
    assert backend.iptables.rules(V4, Table.NAT, "PREROUTING") == ("-s 192.0.2.1/32 -j ACCEPT",)


# --- reading the kernel ---------------------------------------------------------------------

SAVE = """# Generated by iptables-save v1.8.9 on Wed Dec  2 00:42:31 2026
*raw
:PREROUTING ACCEPT [0:0]
:KPROXY-NOT-OURS-TABLE - [0:0]
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KPROXY-SERVICES - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kproxy service portals" -j KPROXY-SERVICES
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KPROXY-SERVICES -d 10.96.0.1/32 -j RETURN
COMMIT
# Completed on Wed Dec  2 00:42:31 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
"""


def test_scan_save_finds_kproxy_chains_and_builtin_rules_per_table() -> None:
    tables = scan_save(SAVE)
    assert set(tables) == {Table.NAT, Table.FILTER}  # raw is not kproxy's
    nat = tables[Table.NAT]
    assert nat.kproxy_chains == {"KPROXY-SERVICES"}
    assert nat.builtin_rules["PREROUTING"] == (
        '-m comment --comment "kproxy service portals" -j KPROXY-SERVICES',
        '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES')
    assert nat.builtin_rules["OUTPUT"] == ()
    assert tables[Table.FILTER] == KernelTable(frozenset(), {
        "INPUT": (), "FORWARD": (), "OUTPUT": ()})
    assert scan_save("") == {}


def test_missing_jumps_compares_arguments_not_spelling() -> None:
    tables = scan_save(SAVE)
    assert missing_jumps([PORTALS, OUTPUT], tables) == (OUTPUT,)
    respelled = BuiltinJump(Table.NAT, "PREROUTING",
                            "-m comment --comment 'kproxy service portals' -j KPROXY-SERVICES"
                            .replace("'", '"'))
    assert missing_jumps([respelled], tables) == ()
    other_target = BuiltinJump(Table.NAT, "PREROUTING",
                               '-m comment --comment "kproxy service portals" -j KPROXY-X')
    assert missing_jumps([other_target], tables) == (other_target,)
    assert missing_jumps([PORTALS], {}) == (PORTALS,)  # no nat table at all yet


def test_nft_listings_give_chain_names_and_one_chains_rules() -> None:
    listing = ("table ip nat {\n\tchain KPROXY-A {\n\t}\n\tchain PREROUTING {\n"
               "\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t}\n}\n"
               "table ip filter {\n\tchain \"KPROXY-B\" {\n\t}\n}\n")
    assert parse_nft_chains(listing) == {"nat": {"KPROXY-A", "PREROUTING"},
                                         "filter": {"KPROXY-B"}}
    listed = ("-P PREROUTING ACCEPT\n"
              '-A PREROUTING -m comment --comment "kproxy x" -j KPROXY-A\n'
              "-A PREROUTINGX -j ACCEPT\n")
    assert listed_rules(listed, "PREROUTING") == ('-m comment --comment "kproxy x" -j KPROXY-A',)


def test_many_stale_chains_go_in_steps_of_their_own() -> None:
    strict = FakeIptables(families=(V4,), complete_targets=True)
    apply_chunks(strict, big_ruleset(30), chunk=10)
    small = big_ruleset(2)  # 112 of the 120 service chains are gone
    existing = {Table.NAT: strict.kproxy_chains(V4, Table.NAT)}
    assert ChunkPolicy(threshold_chains=40, chunk_chains=10).applies(small, existing)
    steps = apply_chunks(strict, small, chunk=10, existing=existing)
    assert all(len(parse_restore(step[Table.NAT])[0].commands) <= 10
               for step in steps[-4:] if Table.NAT in step)
    assert strict.save(V4, Table.NAT) == one_transaction(small).save(V4, Table.NAT)
