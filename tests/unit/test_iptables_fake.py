"""The in-memory iptables: it applies restore payloads and rejects what the kernel would."""

from __future__ import annotations

import pytest

from kproxy.iptables.backend import RestoreError
from kproxy.iptables.cleanup import cleanup, is_kproxy_jump, plan_table_cleanup
from kproxy.iptables.fake import FakeBackend, FakeIptables
from kproxy.iptables.restore import (
    join_payloads,
    parse_save,
    render_delta,
    render_full,
    render_full_replacing,
)
from kproxy.iptables.ruleset import BuiltinJump, Chain, Ruleset, RulesetDelta, Table, TableRules
from kproxy.model.types import IPFamily

V4 = IPFamily.IPV4
V6 = IPFamily.IPV6
PORTALS = BuiltinJump(Table.NAT, "PREROUTING",
                      '-m comment --comment "kproxy service portals" -j KPROXY-SERVICES')
OUTPUT_PORTALS = BuiltinJump(Table.NAT, "OUTPUT",
                             '-m comment --comment "kproxy service portals" -j KPROXY-SERVICES')


def service_chains(name: str, endpoints: int) -> dict[str, Chain]:
    seps = [f"KPROXY-SEP-{name}{i}" for i in range(endpoints)]
    chains = {sep: Chain(sep, (f"-p tcp -m tcp -j DNAT --to-destination 10.244.0.{i}:80",))
              for i, sep in enumerate(seps)}
    svc = f"KPROXY-SVC-{name}"
    chains[svc] = Chain(svc, tuple(f"-j {sep}" for sep in seps))
    return chains


def ruleset(*services: tuple[str, int]) -> Ruleset:
    nat: dict[str, Chain] = {}
    for name, endpoints in services:
        nat.update(service_chains(name, endpoints))
    nat["KPROXY-SERVICES"] = Chain("KPROXY-SERVICES", tuple(
        f"-d 10.96.0.{i}/32 -p tcp -m tcp --dport 80 -j KPROXY-SVC-{name}"
        for i, (name, _) in enumerate(services)))
    filter_chains = {"KPROXY-FIREWALL": Chain("KPROXY-FIREWALL", (
        "-m conntrack --ctstate INVALID -j DROP",))}
    return Ruleset(V4, {Table.NAT: TableRules(Table.NAT, nat),
                        Table.FILTER: TableRules(Table.FILTER, filter_chains)},
                   jumps=(PORTALS,))


def chains_of(fake: FakeIptables, family: IPFamily, table: Table) -> dict[str, tuple[str, ...]]:
    parsed = parse_save(fake.save(family))[table]
    return {name: chain.rules for name, chain in parsed.chains.items()}


def apply(fake: FakeIptables, payloads: dict[Table, str], family: IPFamily = V4) -> None:
    fake.apply_restore(family, join_payloads(payloads))


# --- applying ------------------------------------------------------------------------------


def test_a_full_ruleset_is_what_save_shows_afterwards() -> None:
    fake = FakeIptables()
    planned = ruleset(("A", 2), ("B", 1))
    apply(fake, render_full(planned))
    nat = chains_of(fake, V4, Table.NAT)
    for name, chain in planned.tables[Table.NAT].chains.items():
        assert nat[name] == chain.rules
    assert nat["PREROUTING"] == ()
    assert fake.transactions == 2
    assert fake.references(V4, Table.NAT, "KPROXY-SVC-A") == 1
    assert fake.references(V4, Table.NAT, "KPROXY-SEP-A0") == 1


def test_save_looks_like_iptables_save() -> None:
    fake = FakeIptables()
    fake.apply_restore(V4, "*nat\n:KPROXY-B - [0:0]\n:KPROXY-A - [0:0]\n"
                           "-A KPROXY-B -j KPROXY-A\nCOMMIT\n")
    assert fake.save(V4) == (
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        ":POSTROUTING ACCEPT [0:0]\n:KPROXY-A - [0:0]\n:KPROXY-B - [0:0]\n"
        "-A KPROXY-B -j KPROXY-A\nCOMMIT\n"
    )
    assert fake.save(V4, Table.MANGLE).startswith("*mangle\n:PREROUTING ACCEPT [0:0]\n")
    assert fake.save(V6) == ""


def test_a_delta_rewrites_and_deletes_chains() -> None:
    fake = FakeIptables()
    apply(fake, render_full(ruleset(("A", 2), ("B", 1))))
    delta = RulesetDelta(V4, write={Table.NAT: (
        Chain("KPROXY-SVC-A", ("-j KPROXY-SEP-A0",)),
    )}, delete={Table.NAT: frozenset({"KPROXY-SEP-A1"})})
    apply(fake, render_delta(delta))
    nat = chains_of(fake, V4, Table.NAT)
    assert nat["KPROXY-SVC-A"] == ("-j KPROXY-SEP-A0",)
    assert "KPROXY-SEP-A1" not in nat
    assert nat["KPROXY-SVC-B"] == ("-j KPROXY-SEP-B0",)  # untouched
    assert fake.last_transaction_lines == 4


def test_a_delta_deleting_a_chain_still_used_by_an_unwritten_chain_is_rejected() -> None:
    fake = FakeIptables()
    apply(fake, render_full(ruleset(("A", 2))))
    before = fake.save(V4)
    delta = RulesetDelta(V4, write={}, delete={Table.NAT: frozenset({"KPROXY-SEP-A1"})})
    with pytest.raises(RestoreError, match="still referenced"):
        apply(fake, render_delta(delta))
    assert fake.save(V4) == before


def test_full_replacing_removes_the_chains_of_deleted_services() -> None:
    fake = FakeIptables()
    apply(fake, render_full(ruleset(("A", 2), ("B", 3))))
    existing = {table: fake.kproxy_chains(V4, table) for table in Table}
    apply(fake, render_full_replacing(ruleset(("A", 2)), existing))
    assert fake.kproxy_chains(V4, Table.NAT) == {
        "KPROXY-SERVICES", "KPROXY-SVC-A", "KPROXY-SEP-A0", "KPROXY-SEP-A1"}
    assert fake.references(V4, Table.NAT, "KPROXY-SVC-B") == 0


def test_builtin_declaration_sets_the_policy_and_keeps_the_rules() -> None:
    fake = FakeIptables()
    fake.apply_restore(V4, "*filter\n-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\nCOMMIT\n")
    fake.apply_restore(V4, "*filter\n:INPUT DROP [0:0]\nCOMMIT\n")
    parsed = parse_save(fake.save(V4))[Table.FILTER]
    assert parsed.chains["INPUT"].policy == "DROP"
    assert parsed.chains["INPUT"].rules == ("-p tcp -m tcp --dport 22 -j ACCEPT",)


def test_without_noflush_the_table_is_replaced() -> None:
    fake = FakeIptables()
    fake.apply_restore(V4, "*nat\n:KPROXY-OLD - [0:0]\n-A PREROUTING -j KPROXY-OLD\nCOMMIT\n")
    fake.apply_restore(V4, "*nat\n:KPROXY-NEW - [0:0]\nCOMMIT\n", noflush=False)
    nat = chains_of(fake, V4, Table.NAT)
    assert "KPROXY-OLD" not in nat and nat["PREROUTING"] == ()
    assert "KPROXY-NEW" in nat


def test_insert_delete_and_chain_commands() -> None:
    fake = FakeIptables()
    fake.apply_restore(V4, (
        "*nat\n-N KPROXY-A\n-A KPROXY-A -j RETURN\n-I KPROXY-A -j ACCEPT\n"
        "-I KPROXY-A 2 -j DROP\n-D KPROXY-A 3\n-A PREROUTING -j KPROXY-A\nCOMMIT\n"))
    assert fake.rules(V4, Table.NAT, "KPROXY-A") == ("-j ACCEPT", "-j DROP")
    fake.apply_restore(V4, "*nat\n-D PREROUTING -j KPROXY-A\n-F KPROXY-A\n-X KPROXY-A\nCOMMIT\n")
    assert not fake.chain_exists(V4, Table.NAT, "KPROXY-A")
    assert fake.chain_exists(V4, Table.MANGLE, "PREROUTING")


# --- what the kernel rejects -----------------------------------------------------------------

BASE = ("*nat\n:KPROXY-A - [0:0]\n:KPROXY-B - [0:0]\n-A KPROXY-A -j KPROXY-B\n"
        "-A KPROXY-B -j RETURN\n-A PREROUTING -j KPROXY-A\nCOMMIT\n")


@pytest.mark.parametrize(("payload", "message", "line_number"), [
    ("*nat\n:KPROXY-C - [0:0]\n-A KPROXY-C -j KPROXY-NOPE\nCOMMIT\n", "does not exist", 3),
    ("*nat\n:KPROXY-C - [0:0]\n-A KPROXY-C -g KPROXY-NOPE\nCOMMIT\n", "does not exist", 3),
    # A chain must be declared before the first rule that jumps to it.
    ("*nat\n:KPROXY-C - [0:0]\n-A KPROXY-C -j KPROXY-D\n:KPROXY-D - [0:0]\nCOMMIT\n",
     "does not exist", 3),
    ("*nat\n:KPROXY-B - [0:0]\n-X KPROXY-B\nCOMMIT\n", "still referenced", 3),
    ("*nat\n-X KPROXY-B\nCOMMIT\n", "not empty", 2),
    ("*nat\n:KPROXY-A - [0:0]\n-X KPROXY-A\nCOMMIT\n", "still referenced", 3),
    ("*nat\n:KPROXY-C - [0:0]\n:KPROXY-C - [0:0]\nCOMMIT\n", "declared twice", 3),
    ("*nat\n-A KPROXY-NOPE -j RETURN\nCOMMIT\n", "no chain", 2),
    ("*nat\n-X KPROXY-NOPE\nCOMMIT\n", "no chain", 2),
    ("*nat\n-F KPROXY-NOPE\nCOMMIT\n", "no chain", 2),
    ("*nat\n-D KPROXY-B -j ACCEPT\nCOMMIT\n", "matching rule", 2),
    ("*nat\n-N KPROXY-A\nCOMMIT\n", "already exists", 2),
    ("*natx\n:KPROXY-C - [0:0]\nCOMMIT\n", "unknown table", 1),
    ("*nat\n:KPROXY-C - [0:0]\n", "COMMIT expected", 3),
    ("*nat\n:KPROXY-AAAAAAAAAAAAAAAAAAAAAA - [0:0]\nCOMMIT\n", "over 28", 2),
    ("*nat\n:PREROUTING - [0:0]\nCOMMIT\n", "needs ACCEPT or DROP", 2),
    ("*nat\n:KPROXY-C ACCEPT [0:0]\nCOMMIT\n", "policy on user chain", 2),
    ("*nat\n:DNAT - [0:0]\nCOMMIT\n", "clashes with a target", 2),
    ("*nat\n:KPROXY-C - [0:0]\n-A KPROXY-C -j PREROUTING\nCOMMIT\n", "builtin chain", 3),
    ("*nat\n:KPROXY-C - [0:0]\n-A KPROXY-C -j DNAT --to-destination 10.1.1.1:80\nCOMMIT\n",
     "needs -p", 3),
    ("*nat\n-X PREROUTING\nCOMMIT\n", "builtin", 2),
    ("*nat\n-I KPROXY-B 5 -j RETURN\nCOMMIT\n", "too big", 2),
    ("*nat\n-D KPROXY-B 2\nCOMMIT\n", "no rule number", 2),
])
def test_rejected_transactions_change_nothing(payload: str, message: str,
                                              line_number: int) -> None:
    fake = FakeIptables()
    fake.apply_restore(V4, BASE)
    before, committed = fake.save(V4), fake.transactions
    with pytest.raises(RestoreError, match=message) as caught:
        fake.apply_restore(V4, payload)
    assert caught.value.line_number == line_number
    assert fake.save(V4) == before
    assert fake.transactions == committed
    assert fake.rejected == 1 and not fake.history[-1].committed


def test_a_rejection_undoes_every_earlier_line_of_the_same_table() -> None:
    fake = FakeIptables()
    fake.apply_restore(V4, BASE)
    before = fake.save(V4)
    with pytest.raises(RestoreError):
        fake.apply_restore(V4, "*nat\n:KPROXY-A - [0:0]\n:KPROXY-NEW - [0:0]\n"
                               "-A KPROXY-A -j RETURN\n-X KPROXY-NOPE\nCOMMIT\n")
    assert fake.save(V4) == before
    assert fake.references(V4, Table.NAT, "KPROXY-B") == 1


def test_tables_commit_one_by_one_and_processing_stops_at_the_first_failure() -> None:
    fake = FakeIptables()
    with pytest.raises(RestoreError):
        fake.apply_restore(V4, (
            "*nat\n:KPROXY-T1 - [0:0]\nCOMMIT\n"
            "*filter\n:KPROXY-T2 - [0:0]\n-A KPROXY-T2 -j KPROXY-NOPE\nCOMMIT\n"
            "*mangle\n:KPROXY-T3 - [0:0]\nCOMMIT\n"))
    assert fake.chain_exists(V4, Table.NAT, "KPROXY-T1")
    assert not fake.chain_exists(V4, Table.FILTER, "KPROXY-T2")
    assert not fake.chain_exists(V4, Table.MANGLE, "KPROXY-T3")
    with pytest.raises(RestoreError, match="COMMIT expected"):
        fake.apply_restore(V4, "*nat\n:KPROXY-T4 - [0:0]\nCOMMIT\n*filter\n:KPROXY-T5 - [0:0]\n")
    assert fake.chain_exists(V4, Table.NAT, "KPROXY-T4")


def test_a_missing_family_is_an_error() -> None:
    fake = FakeIptables(families=[V4])
    with pytest.raises(RestoreError, match="IPv6"):
        fake.apply_restore(V6, "*nat\nCOMMIT\n")


def test_comments_hiding_jumps_do_not_fool_the_reference_check() -> None:
    fake = FakeIptables()
    fake.apply_restore(V4, '*nat\n:KPROXY-A - [0:0]\n'
                           '-A KPROXY-A -m comment --comment "x -j KPROXY-NOPE" -j RETURN\n'
                           'COMMIT\n')
    assert fake.references(V4, Table.NAT, "KPROXY-NOPE") == 0


# --- builtin jumps and the no-change sync ----------------------------------------------------


def test_ensure_jump_inserts_once_at_the_top() -> None:
    fake = FakeIptables()
    fake.apply_restore(V4, "*nat\n:KPROXY-SERVICES - [0:0]\n-A PREROUTING -j RETURN\nCOMMIT\n")
    assert fake.ensure_jump(V4, PORTALS) is True
    assert fake.ensure_jump(V4, PORTALS) is False
    assert fake.rules(V4, Table.NAT, "PREROUTING") == (PORTALS.args, "-j RETURN")
    last = BuiltinJump(Table.NAT, "PREROUTING", "-m comment --comment kproxy-last -j RETURN",
                       first=False)
    fake.ensure_jump(V4, last)
    assert fake.rules(V4, Table.NAT, "PREROUTING")[-1] == last.args


def test_a_jump_to_a_missing_chain_is_rejected() -> None:
    fake = FakeIptables()
    with pytest.raises(RestoreError, match="does not exist"):
        fake.ensure_jump(V4, PORTALS)


def test_delete_jump_removes_every_copy_and_unblocks_the_chain() -> None:
    fake = FakeIptables()
    fake.apply_restore(V4, "*nat\n:KPROXY-SERVICES - [0:0]\nCOMMIT\n")
    fake.apply_restore(V4, f"*nat\n-A PREROUTING {PORTALS.args}\n"
                           f"-A PREROUTING {PORTALS.args}\nCOMMIT\n")
    assert fake.delete_jump(V4, PORTALS) == 2
    assert fake.delete_jump(V4, PORTALS) == 0
    fake.apply_restore(V4, "*nat\n-X KPROXY-SERVICES\nCOMMIT\n")


def test_a_sync_without_changes_writes_nothing() -> None:
    backend = FakeBackend()
    planned = ruleset(("A", 2))
    backend.restore_all(V4, render_full(planned))
    assert backend.ensure_jumps(V4, planned.jumps) == 1
    transactions = backend.iptables.transactions
    no_change = RulesetDelta(V4, write={}, delete={})
    backend.restore_all(V4, render_delta(no_change))
    assert backend.ensure_jumps(V4, planned.jumps) == 0
    assert backend.iptables.transactions == transactions


def test_transaction_counts() -> None:
    fake = FakeIptables()
    apply(fake, render_full(ruleset(("A", 1))))
    assert fake.transactions == 2
    assert [(record.table, record.lines, record.committed) for record in fake.history] == [
        ("nat", 6, True), ("filter", 2, True)]
    assert fake.last_transaction_lines == 2


# --- the backend interface -------------------------------------------------------------------


def test_fake_backend_implements_the_interface() -> None:
    backend = FakeBackend(FakeIptables(families=[V4]))
    assert backend.name == "fake" and backend.families() == (V4,)
    planned = ruleset(("A", 1))
    backend.restore(V4, Table.NAT, render_full(planned)[Table.NAT])
    assert backend.list_kproxy_chains(V4, Table.NAT) == planned.chain_names(Table.NAT)
    assert backend.chain_exists(V4, Table.NAT, "KPROXY-SVC-A")
    assert not backend.chain_exists(V4, Table.FILTER, "KPROXY-SVC-A")
    assert backend.ensure_jumps(V4, [PORTALS, OUTPUT_PORTALS]) == 2
    assert backend.remove_jumps(V4, [PORTALS, OUTPUT_PORTALS]) == 2
    assert parse_save(backend.save(V4, Table.NAT))[Table.NAT].chains["OUTPUT"].rules == ()


def test_injected_failures_change_nothing() -> None:
    backend = FakeBackend()
    backend.fail_restores = 1
    with pytest.raises(RestoreError, match="injected"):
        backend.restore_all(V4, render_full(ruleset(("A", 1))))
    assert backend.iptables.transactions == 0
    backend.restore_all(V4, render_full(ruleset(("A", 1))))
    assert backend.iptables.transactions == 2


# --- cleanup ---------------------------------------------------------------------------------

FOREIGN = (
    "*nat\n:KUBE-SERVICES - [0:0]\n"
    "-A PREROUTING -p tcp -m tcp --dport 2222 -j DNAT --to-destination 10.0.0.2:22\n"
    '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES\n'
    "-A KUBE-SERVICES -j RETURN\nCOMMIT\n"
    "*filter\n-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\nCOMMIT\n"
)


def loaded_backend(families: tuple[IPFamily, ...] = (V4, V6)) -> FakeBackend:
    backend = FakeBackend()
    for family in families:
        backend.iptables.apply_restore(family, FOREIGN)
        planned = ruleset(("A", 2), ("B", 1))
        backend.restore_all(family, render_full(planned))
        backend.ensure_jumps(family, [*planned.jumps, OUTPUT_PORTALS, BuiltinJump(
            Table.FILTER, "FORWARD", '-m comment --comment "kproxy firewall" -j KPROXY-FIREWALL')])
    return backend


def test_cleanup_removes_all_of_kproxy_and_nothing_else() -> None:
    backend = loaded_backend()
    report = cleanup(backend, [V4, V6])
    assert report.ok and not report.kept_chains
    assert len(report.removed_jumps) == 6
    assert len(report.deleted_chains) == 2 * 7  # 6 in nat, 1 in filter
    expected = FakeBackend()
    for family in (V4, V6):
        expected.iptables.apply_restore(family, FOREIGN)
        for table in (Table.NAT, Table.FILTER):
            assert (chains_of(backend.iptables, family, table)
                    == chains_of(expected.iptables, family, table))
    again = cleanup(backend, [V4, V6])
    assert again.ok and again.removed_jumps == () and again.deleted_chains == ()


def test_cleanup_keeps_but_flushes_a_kproxy_chain_someone_else_jumps_to() -> None:
    backend = loaded_backend((V4,))
    backend.iptables.apply_restore(V4, "*nat\n-A KUBE-SERVICES -j KPROXY-SVC-A\nCOMMIT\n")
    report = cleanup(backend, [V4])
    assert report.ok
    assert report.kept_chains == ((V4, Table.NAT, "KPROXY-SVC-A"),)
    assert backend.list_kproxy_chains(V4, Table.NAT) == {"KPROXY-SVC-A"}
    assert backend.iptables.rules(V4, Table.NAT, "KPROXY-SVC-A") == ()


def test_cleanup_reports_failures_and_goes_on() -> None:
    backend = loaded_backend((V4,))
    backend.fail_restores = 2  # the quick plan and the careful one after it
    report = cleanup(backend)  # families: the backend's own (IPv6 has nothing)
    assert not report.ok and "injected" in report.errors[0]
    assert backend.list_kproxy_chains(V4, Table.NAT)  # nat failed ...
    assert not backend.list_kproxy_chains(V4, Table.FILTER)  # ... filter was still cleaned


def test_is_kproxy_jump_needs_kproxys_comment() -> None:
    assert is_kproxy_jump('-m comment --comment "kproxy service portals" -j KPROXY-SERVICES')
    assert not is_kproxy_jump('-m comment --comment "kubernetes service portals" -j X')
    assert not is_kproxy_jump('-m comment --comment kproxy-ish -j X')
    assert not is_kproxy_jump("-j KPROXY-SERVICES")


def test_plan_table_cleanup_renders_one_transaction() -> None:
    backend = loaded_backend((V4,))
    parsed = parse_save(backend.save(V4))[Table.FILTER]
    plan = plan_table_cleanup(parsed)
    assert plan.render() == (
        "*filter\n:KPROXY-FIREWALL - [0:0]\n"
        '-D FORWARD -m comment --comment "kproxy firewall" -j KPROXY-FIREWALL\n'
        "-X KPROXY-FIREWALL\nCOMMIT\n")
