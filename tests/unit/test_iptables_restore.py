"""The restore text format (render, parse), and the iptables-restore backend's command lines."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kproxy.config.record import IptablesBackend
from kproxy.iptables.backend import (
    STDIN_SLICE,
    CommandError,
    CommandResult,
    RestoreError,
    Stdin,
    detect_mode,
    open_backend,
    payload_line,
    run_command,
)
from kproxy.iptables.restore import (
    Op,
    RestoreSyntaxError,
    SaveFormatError,
    iter_restore,
    join_payloads,
    jump_target,
    parse_restore,
    parse_save,
    render_delta,
    render_full,
    render_full_replacing,
    split_args,
    tokenize_args,
)
from kproxy.iptables.restore_backend import RestoreBackend
from kproxy.iptables.ruleset import BuiltinJump, Chain, Ruleset, RulesetDelta, Table, TableRules
from kproxy.model.types import IPFamily

SVC = "KPROXY-SVC-AAAA"
SEP1 = "KPROXY-SEP-1111"
SEP2 = "KPROXY-SEP-2222"


def small_ruleset() -> Ruleset:
    nat = {
        "KPROXY-SERVICES": Chain("KPROXY-SERVICES", (
            f'-d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http cluster IP" '
            f"-m tcp --dport 80 -j {SVC}",
        )),
        SVC: Chain(SVC, (
            f"-m statistic --mode random --probability 0.50000000000 -j {SEP1}",
            f"-j {SEP2}",
        )),
        SEP1: Chain(SEP1, ("-p tcp -m tcp -j DNAT --to-destination 10.244.1.5:8080",)),
        SEP2: Chain(SEP2, ("-p tcp -m tcp -j DNAT --to-destination 10.244.2.5:8080",)),
        "KPROXY-EMPTY": Chain("KPROXY-EMPTY"),
    }
    filter_chains = {"KPROXY-FIREWALL": Chain("KPROXY-FIREWALL", (
        "-m conntrack --ctstate INVALID -j DROP",
    ))}
    return Ruleset(IPFamily.IPV4, {
        Table.NAT: TableRules(Table.NAT, nat),
        Table.FILTER: TableRules(Table.FILTER, filter_chains),
        Table.MANGLE: TableRules(Table.MANGLE, {}),
    })


# --- rendering -----------------------------------------------------------------------------


def test_render_full_declares_every_chain_then_appends_all_rules() -> None:
    payloads = render_full(small_ruleset())
    assert list(payloads) == [Table.NAT, Table.FILTER]  # a table without chains is left out
    assert payloads[Table.NAT] == (
        "*nat\n"
        ":KPROXY-SERVICES - [0:0]\n"
        f":{SVC} - [0:0]\n"
        f":{SEP1} - [0:0]\n"
        f":{SEP2} - [0:0]\n"
        ":KPROXY-EMPTY - [0:0]\n"
        '-A KPROXY-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http '
        f'cluster IP" -m tcp --dport 80 -j {SVC}\n'
        f"-A {SVC} -m statistic --mode random --probability 0.50000000000 -j {SEP1}\n"
        f"-A {SVC} -j {SEP2}\n"
        f"-A {SEP1} -p tcp -m tcp -j DNAT --to-destination 10.244.1.5:8080\n"
        f"-A {SEP2} -p tcp -m tcp -j DNAT --to-destination 10.244.2.5:8080\n"
        "COMMIT\n"
    )
    assert payloads[Table.FILTER] == (
        "*filter\n:KPROXY-FIREWALL - [0:0]\n"
        "-A KPROXY-FIREWALL -m conntrack --ctstate INVALID -j DROP\nCOMMIT\n"
    )


def test_render_full_replacing_flushes_and_deletes_stale_chains_after_all_rules() -> None:
    existing = {
        Table.NAT: {SVC, "KPROXY-SEP-OLD", "KPROXY-SVC-OLD", "KUBE-SERVICES"},
        Table.MANGLE: {"KPROXY-GONE"},
    }
    payloads = render_full_replacing(small_ruleset(), existing)
    nat = payloads[Table.NAT].splitlines()
    assert ":KPROXY-SEP-OLD - [0:0]" in nat and ":KPROXY-SVC-OLD - [0:0]" in nat
    assert nat[-3:] == ["-X KPROXY-SEP-OLD", "-X KPROXY-SVC-OLD", "COMMIT"]
    last_rule = max(i for i, line in enumerate(nat) if line.startswith("-A "))
    first_delete = min(i for i, line in enumerate(nat) if line.startswith("-X "))
    assert last_rule < first_delete
    # Someone else's chain is never deleted; a chain still planned is not either.
    assert not any("KUBE-SERVICES" in line for line in nat)
    assert f"-X {SVC}" not in nat
    # A table the ruleset no longer uses still gets its stale chains removed.
    assert payloads[Table.MANGLE] == "*mangle\n:KPROXY-GONE - [0:0]\n-X KPROXY-GONE\nCOMMIT\n"


def test_render_full_is_render_full_replacing_with_nothing_existing() -> None:
    assert render_full(small_ruleset()) == render_full_replacing(small_ruleset(), {})


def test_render_delta_rewrites_written_chains_and_deletes_the_others_last() -> None:
    delta = RulesetDelta(
        IPFamily.IPV4,
        write={Table.NAT: (Chain(SVC, (f"-j {SEP1}",)),)},
        delete={Table.NAT: frozenset({SEP2, "KPROXY-SEP-0000"})},
    )
    assert render_delta(delta) == {Table.NAT: (
        "*nat\n"
        f":{SVC} - [0:0]\n"
        ":KPROXY-SEP-0000 - [0:0]\n"
        f":{SEP2} - [0:0]\n"
        f"-A {SVC} -j {SEP1}\n"
        "-X KPROXY-SEP-0000\n"
        f"-X {SEP2}\n"
        "COMMIT\n"
    )}


def test_render_delta_with_only_deletes_and_empty_delta() -> None:
    only_deletes = RulesetDelta(IPFamily.IPV4, write={}, delete={Table.FILTER: frozenset({SEP1})})
    assert render_delta(only_deletes) == {
        Table.FILTER: f"*filter\n:{SEP1} - [0:0]\n-X {SEP1}\nCOMMIT\n"}
    empty = RulesetDelta(IPFamily.IPV4, write={Table.NAT: ()}, delete={Table.NAT: frozenset()})
    assert empty.empty and render_delta(empty) == {}


def test_render_delta_refuses_contradictions_and_foreign_chains() -> None:
    both = RulesetDelta(IPFamily.IPV4, write={Table.NAT: (Chain(SVC),)},
                        delete={Table.NAT: frozenset({SVC})})
    with pytest.raises(ValueError, match="both written and deleted"):
        render_delta(both)
    foreign = RulesetDelta(IPFamily.IPV4, write={}, delete={Table.NAT: frozenset({"KUBE-X"})})
    with pytest.raises(ValueError, match="does not own"):
        render_delta(foreign)


def test_join_payloads_keeps_every_table_block() -> None:
    payloads = render_full(small_ruleset())
    joined = join_payloads(payloads)
    assert [t.table for t in parse_restore(joined)] == ["nat", "filter"]
    assert join_payloads({}) == ""


def test_render_full_of_a_large_ruleset_round_trips_through_the_parser() -> None:
    chains = {f"KPROXY-SEP-{i:05d}": Chain(f"KPROXY-SEP-{i:05d}", (
        f"-s 10.1.{i // 256}.{i % 256}/32 -j KPROXY-MARK", "-j RETURN")) for i in range(3000)}
    ruleset = Ruleset(IPFamily.IPV4, {Table.NAT: TableRules(Table.NAT, chains)})
    [transaction] = parse_restore(render_full(ruleset)[Table.NAT])
    appended = [c for c in transaction.commands if c.op is Op.APPEND]
    assert len(appended) == ruleset.rule_count == 6000
    assert appended[0].chain == "KPROXY-SEP-00000"
    assert appended[0].args == "-s 10.1.0.0/32 -j KPROXY-MARK"


# --- iptables-save output ------------------------------------------------------------------

SAVED = """\
# Generated by iptables-save v1.8.9 on Thu Nov 26 21:07:27 2026
*raw
:PREROUTING ACCEPT [0:0]
-A PREROUTING -j CT --notrack
COMMIT
*nat
:PREROUTING ACCEPT [12:720]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [3:180]
:POSTROUTING DROP [0:0]
:KPROXY-SERVICES - [0:0]
:KUBE-SERVICES - [0:0]
[5:300] -A PREROUTING -m comment --comment "kproxy service portals" -j KPROXY-SERVICES
-A PREROUTING -j KUBE-SERVICES
-A KPROXY-SERVICES -d 10.96.0.10/32 -j RETURN
COMMIT
# Completed on Thu Nov 26 21:07:27 2026
"""


def test_parse_save_reads_chains_policies_and_rules_per_table() -> None:
    tables = parse_save(SAVED)
    assert list(tables) == [Table.NAT]  # raw is not kproxy's
    nat = tables[Table.NAT]
    assert list(nat.chains) == [
        "PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "KPROXY-SERVICES", "KUBE-SERVICES"]
    assert nat.chains["POSTROUTING"].policy == "DROP"
    assert nat.chains["KUBE-SERVICES"].policy is None
    assert nat.chains["PREROUTING"].rules == (
        '-m comment --comment "kproxy service portals" -j KPROXY-SERVICES',
        "-j KUBE-SERVICES",
    )
    assert nat.user_chains() == ["KPROXY-SERVICES", "KUBE-SERVICES"]
    assert nat.kproxy_chains() == {"KPROXY-SERVICES"}


def test_parse_save_reads_back_what_render_full_wrote() -> None:
    ruleset = small_ruleset()
    tables = parse_save(join_payloads(render_full(ruleset)))
    for table, rules in ruleset.tables.items():
        if not rules.chains:
            continue
        parsed = tables[table]
        assert {name: chain.rules for name, chain in parsed.chains.items()} == {
            name: chain.rules for name, chain in rules.chains.items()}


@pytest.mark.parametrize("text", [
    "-A X -j RETURN\n",  # outside a table
    "*nat\n:X - [0:0]\n",  # no COMMIT
    "*nat\n-A X -j RETURN\nCOMMIT\n",  # undeclared chain
    "*nat\n:X\nCOMMIT\n",  # declaration without policy
    "*nat\n-I X 1 -j RETURN\nCOMMIT\n",  # not save output
])
def test_parse_save_rejects_what_iptables_save_never_prints(text: str) -> None:
    with pytest.raises(SaveFormatError):
        parse_save(text)


# --- iptables-restore input ----------------------------------------------------------------


def test_parse_restore_understands_every_command_kproxy_and_cleanup_write() -> None:
    text = (
        "*nat\n"
        ":PREROUTING ACCEPT [0:0]\n"
        ":KPROXY-A - [0:0]\n"
        "[3:4] -A KPROXY-A -j RETURN\n"
        "-I PREROUTING 2 -j KPROXY-A\n"
        "-I PREROUTING -j KPROXY-A\n"
        "-D PREROUTING -j KPROXY-A\n"
        "-D PREROUTING 3\n"
        "-N KPROXY-B\n"
        "-F KPROXY-B\n"
        "-X KPROXY-B\n"
        "# a comment\n"
        "\n"
        "COMMIT\n"
    )
    [transaction] = parse_restore(text)
    assert (transaction.table, transaction.line_number, transaction.commit_line_number) == (
        "nat", 1, 14)
    summary = [(c.op, c.chain, c.args, c.position, c.policy) for c in transaction.commands]
    assert summary == [
        (Op.DECLARE, "PREROUTING", "", 0, "ACCEPT"),
        (Op.DECLARE, "KPROXY-A", "", 0, "-"),
        (Op.APPEND, "KPROXY-A", "-j RETURN", 0, "-"),
        (Op.INSERT, "PREROUTING", "-j KPROXY-A", 2, "-"),
        (Op.INSERT, "PREROUTING", "-j KPROXY-A", 0, "-"),
        (Op.DELETE_RULE, "PREROUTING", "-j KPROXY-A", 0, "-"),
        (Op.DELETE_RULE, "PREROUTING", "", 3, "-"),
        (Op.NEW_CHAIN, "KPROXY-B", "", 0, "-"),
        (Op.FLUSH, "KPROXY-B", "", 0, "-"),
        (Op.DELETE_CHAIN, "KPROXY-B", "", 0, "-"),
    ]
    assert [c.line_number for c in transaction.commands] == list(range(2, 12))
    assert transaction.written_lines == 10


@pytest.mark.parametrize(("text", "line_number"), [
    ("-A X -j RETURN\nCOMMIT\n", 1),
    ("*nat\n:X - [0:0]\n", 3),
    ("*nat\n-Z X\nCOMMIT\n", 2),
    ("*nat\n-X\nCOMMIT\n", 2),
    ("*nat\n:X\nCOMMIT\n", 2),
    ("*\nCOMMIT\n", 1),
])
def test_parse_restore_reports_the_line_iptables_restore_would(text: str,
                                                               line_number: int) -> None:
    with pytest.raises(RestoreSyntaxError) as caught:
        parse_restore(text)
    assert caught.value.line_number == line_number


def test_iter_restore_yields_complete_tables_before_a_later_error() -> None:
    transactions = iter_restore("*nat\n:KPROXY-A - [0:0]\nCOMMIT\n*filter\n:KPROXY-B - [0:0]\n")
    assert next(transactions).table == "nat"
    with pytest.raises(RestoreSyntaxError, match="COMMIT expected"):
        next(transactions)


# --- rule arguments ------------------------------------------------------------------------


def test_split_args_follows_iptables_restore_quoting() -> None:
    assert split_args('-m comment --comment "a b" -j X') == [
        "-m", "comment", "--comment", "a b", "-j", "X"]
    assert split_args(r'--comment "say \"hi\" \\ \'x\'"') == ["--comment", "say \"hi\" \\ 'x'"]
    assert split_args('--comment ""  -j  X') == ["--comment", "", "-j", "X"]
    assert split_args('a"b c"d') == ["ab cd"]
    assert [t.quoted for t in tokenize_args('"-x" -x')] == [True, False]
    with pytest.raises(ValueError, match="unterminated"):
        split_args('--comment "open')


@pytest.mark.parametrize(("args", "target"), [
    ("-j KPROXY-SVC-A", "KPROXY-SVC-A"),
    ("-d 10.0.0.1/32 -p tcp -m tcp --dport 80 -j KPROXY-SVC-A", "KPROXY-SVC-A"),
    ("-s 10.0.0.0/8 -g KPROXY-MARK", "KPROXY-MARK"),
    ("-p tcp -m tcp -j DNAT --to-destination 10.1.1.1:80", "DNAT"),
    ('-m comment --comment "ns/svc -j FAKE" -j RETURN', "RETURN"),
    ('-m comment --comment "ends with -j FAKE"', None),
    (r'-m comment --comment "quote \" -j FAKE" -j KPROXY-B', "KPROXY-B"),
    ("-m mark --mark 0x4000/0x4000", None),
    ("", None),
])
def test_jump_target(args: str, target: str | None) -> None:
    assert jump_target(args) == target


def save_quote(text: str) -> str:
    """How iptables-save prints a comment (xtables_save_string)."""
    safe = "_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    if text and all(c in safe for c in text):
        return text
    escaped = "".join(f"\\{c}" if c in "\"\\'" else c for c in text)
    return f'"{escaped}"'


comments = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=30)


@given(comment=comments, target=st.sampled_from(["KPROXY-SEP-X", "RETURN", "DNAT", None]))
def test_jump_target_sees_through_any_comment(comment: str, target: str | None) -> None:
    args = f"-m comment --comment {save_quote(comment)}"
    if target is not None:
        args += f" -j {target}"
    assert jump_target(args) == target
    assert split_args(args)[:4] == ["-m", "comment", "--comment", comment]


# --- the iptables-restore backend's commands -------------------------------------------------


class ScriptedRunner:
    """Records commands; answers from a list of (predicate, result) rules, else success."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], Stdin]] = []
        self.timeouts: list[float | None] = []
        # (command line or a part of it, exact, rc, stdout, stderr)
        self.answers: list[tuple[str, bool, int, str, str]] = []

    def answer(self, command: str, returncode: int = 0, stdout: str = "", stderr: str = "",
               *, exact: bool = False) -> None:
        self.answers.append((command, exact, returncode, stdout, stderr))

    def __call__(self, argv: Sequence[str], stdin: Stdin = None, *,
                 timeout: float | None = 60.0) -> CommandResult:
        self.calls.append((list(argv), stdin))
        self.timeouts.append(timeout)
        line = " ".join(argv)
        for index, (command, exact, returncode, stdout, stderr) in enumerate(self.answers):
            if line.endswith(command) if exact else command in line:
                del self.answers[index]
                return CommandResult(tuple(argv), returncode, stdout, stderr)
        return CommandResult(tuple(argv), 0, "", "")


PREFIX = ["ip", "netns", "exec", "kp-test"]


def test_restore_runs_one_noflush_process_per_family_with_the_lock_flags() -> None:
    runner = ScriptedRunner()
    backend = RestoreBackend(IptablesBackend.NFT, command_prefix=PREFIX, runner=runner)
    payloads = render_full(small_ruleset())
    backend.restore_all(IPFamily.IPV6, payloads)
    [(argv, stdin)] = runner.calls
    assert argv == [*PREFIX, "ip6tables-nft-restore", "-w", "5", "-W", "100000",
                    "--noflush", "--counters"]
    # Streamed table by table, never joined into one text.
    assert stdin == (payloads[Table.NAT], payloads[Table.FILTER])
    assert runner.timeouts == [None]  # a restore takes as long as the ruleset needs
    backend.restore_all(IPFamily.IPV4, {})
    assert len(runner.calls) == 1  # nothing to write: no process


def test_restore_failure_names_the_failing_line() -> None:
    runner = ScriptedRunner()
    runner.answer("restore", 1, stderr="Ignoring deprecated --wait-interval option.\n"
                                       "iptables-restore: line 3 failed\n")
    backend = RestoreBackend(IptablesBackend.LEGACY, runner=runner)
    with pytest.raises(RestoreError) as caught:
        backend.restore(IPFamily.IPV4, Table.NAT, "*nat\n:KPROXY-A - [0:0]\n-X KPROXY-B\nCOMMIT\n")
    assert runner.calls[0][0][0] == "iptables-legacy-restore"
    assert (caught.value.line_number, caught.value.line) == (3, "-X KPROXY-B")
    assert caught.value.stderr == "iptables-restore: line 3 failed"


def test_ensure_jumps_checks_first_and_inserts_only_what_is_missing() -> None:
    runner = ScriptedRunner()
    runner.answer("-C PREROUTING", 1, stderr="Bad rule")
    backend = RestoreBackend(IptablesBackend.NFT, runner=runner)
    jumps = [
        BuiltinJump(Table.NAT, "PREROUTING", '-m comment --comment "kproxy portals" -j KPROXY-S'),
        BuiltinJump(Table.NAT, "OUTPUT", '-m comment --comment "kproxy portals" -j KPROXY-S'),
        BuiltinJump(Table.FILTER, "FORWARD", "-m comment --comment kproxy-x -j KPROXY-F",
                    first=False),
    ]
    assert backend.ensure_jumps(IPFamily.IPV4, jumps) == 1
    spec = ["-m", "comment", "--comment", "kproxy portals", "-j", "KPROXY-S"]
    lock = ["-w", "5", "-W", "100000"]
    assert [argv for argv, _ in runner.calls] == [
        ["iptables-nft", *lock, "-t", "nat", "-C", "PREROUTING", *spec],
        ["iptables-nft", *lock, "-t", "nat", "-I", "PREROUTING", "1", *spec],
        ["iptables-nft", *lock, "-t", "nat", "-C", "OUTPUT", *spec],
        ["iptables-nft", *lock, "-t", "filter", "-C", "FORWARD", "-m", "comment",
         "--comment", "kproxy-x", "-j", "KPROXY-F"],
    ]
    runner.answer("-C", 2, stderr="Chain 'KPROXY-S' does not exist")
    with pytest.raises(CommandError, match="does not exist"):
        backend.ensure_jumps(IPFamily.IPV4, jumps[:1])


def test_remove_jumps_deletes_every_copy() -> None:
    runner = ScriptedRunner()
    runner.answer("-D", 0)
    runner.answer("-D", 0)
    runner.answer("-D", 1, stderr="Bad rule (does a matching rule exist in that chain?)")
    backend = RestoreBackend(IptablesBackend.NFT, runner=runner)
    jump = BuiltinJump(Table.NAT, "PREROUTING", '-m comment --comment "kproxy x" -j KPROXY-S')
    assert backend.remove_jumps(IPFamily.IPV4, [jump]) == 2
    assert len(runner.calls) == 3


def test_remove_jumps_to_a_chain_that_is_gone_is_a_no_op() -> None:
    runner = ScriptedRunner()
    runner.answer("-D", 2, stderr="Couldn't load target `KPROXY-S'")
    runner.answer("-S KPROXY-S", 1)
    backend = RestoreBackend(IptablesBackend.LEGACY, runner=runner)
    jump = BuiltinJump(Table.NAT, "PREROUTING", '-m comment --comment "kproxy x" -j KPROXY-S')
    assert backend.remove_jumps(IPFamily.IPV4, [jump]) == 0


def test_families_leave_out_a_family_whose_tool_does_not_work() -> None:
    runner = ScriptedRunner()
    runner.answer("ip6tables-legacy", 127, stderr="No such file or directory")
    backend = RestoreBackend(IptablesBackend.LEGACY, runner=runner)
    assert backend.families() == (IPFamily.IPV4,)
    assert backend.families() == (IPFamily.IPV4,)  # asked once
    assert len(runner.calls) == 2


def test_list_kproxy_chains_and_chain_exists() -> None:
    runner = ScriptedRunner()
    runner.answer("iptables-legacy-save", 0, stdout=SAVED)
    runner.answer("-S KPROXY-CANARY", 1)
    runner.answer("-S KPROXY-CANARY", 4, stderr="Another app is currently holding the lock")
    backend = RestoreBackend(IptablesBackend.LEGACY, runner=runner)
    assert backend.list_kproxy_chains(IPFamily.IPV4, Table.NAT) == {"KPROXY-SERVICES"}
    assert backend.chain_exists(IPFamily.IPV4, Table.MANGLE, "KPROXY-CANARY") is False
    with pytest.raises(CommandError):
        backend.chain_exists(IPFamily.IPV4, Table.MANGLE, "KPROXY-CANARY")
    assert backend.chain_exists(IPFamily.IPV4, Table.MANGLE, "KPROXY-CANARY") is True


# --- choosing the backend ------------------------------------------------------------------

HINTED = "*mangle\n:PREROUTING ACCEPT [0:0]\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n"
RULES = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\n-A INPUT -j DROP\nCOMMIT\n"


def detect(outputs: dict[str, str]) -> tuple[IptablesBackend, list[str]]:
    runner = ScriptedRunner()
    for command, stdout in outputs.items():
        runner.answer(command, 0, stdout=stdout, exact=True)
    mode = detect_mode(IptablesBackend.AUTO, runner=runner, command_prefix=PREFIX)
    return mode, [" ".join(argv[len(PREFIX):]) for argv, _ in runner.calls]


def test_auto_prefers_the_variant_with_kubelets_hint_chains() -> None:
    mode, calls = detect({"ip6tables-nft-save -t mangle": HINTED})
    assert mode is IptablesBackend.NFT
    assert calls == ["iptables-nft-save -t mangle", "ip6tables-nft-save -t mangle"]
    mode, calls = detect({"iptables-legacy-save": HINTED, "iptables-nft-save": RULES})
    assert mode is IptablesBackend.LEGACY
    # Never "-t mangle" with legacy: that would create the table.
    assert "iptables-legacy-save" in calls and "iptables-legacy-save -t mangle" not in calls


def test_auto_without_hints_counts_rules_and_defaults_to_nft() -> None:
    mode, _ = detect({"iptables-legacy-save": RULES})
    assert mode is IptablesBackend.LEGACY
    mode, _ = detect({"iptables-legacy-save": RULES, "ip6tables-nft-save": RULES})
    assert mode is IptablesBackend.NFT  # a tie goes to nft
    mode, _ = detect({})
    assert mode is IptablesBackend.NFT


def test_an_explicit_backend_is_not_second_guessed() -> None:
    runner = ScriptedRunner()
    for requested in (IptablesBackend.NFT, IptablesBackend.LEGACY, IptablesBackend.LIBIPTC):
        assert detect_mode(requested, runner=runner) is requested
    assert runner.calls == []


def test_open_backend_builds_the_restore_backend_with_the_prefix() -> None:
    runner = ScriptedRunner()
    backend = open_backend(IptablesBackend.LEGACY, command_prefix=PREFIX, runner=runner)
    assert isinstance(backend, RestoreBackend)
    assert backend.name == "legacy"
    assert backend.program(IPFamily.IPV6, "save") == "ip6tables-legacy-save"
    with pytest.raises(ValueError, match="in-process"):
        open_backend(IptablesBackend.LIBIPTC, command_prefix=PREFIX, runner=runner)


def test_nft_style_errors_point_at_the_line_too() -> None:
    runner = ScriptedRunner()
    runner.answer("restore", 2, stderr=(
        "iptables-nft-restore v1.8.9 (nf_tables): Chain 'KPROXY-NOPE' does not exist\n"
        "Error occurred at line: 4\n"
        "Try `iptables-nft-restore -h' or 'iptables-nft-restore --help' for more information.\n"))
    backend = RestoreBackend(IptablesBackend.NFT, runner=runner)
    payload = "*nat\n:KPROXY-C - [0:0]\n-A KPROXY-C -j KPROXY-NOPE\nCOMMIT\n"
    with pytest.raises(RestoreError, match="does not exist") as caught:
        backend.restore(IPFamily.IPV4, Table.NAT, payload)
    # nft checks jumps when the table commits, and names the COMMIT line.
    assert (caught.value.line_number, caught.value.line) == (4, "COMMIT")


def test_libiptc_unavailable_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    from kproxy.iptables.libiptc_backend import LibiptcUnavailable, load_iptc

    monkeypatch.setitem(sys.modules, "iptc", None)  # as if python-iptables were not installed
    monkeypatch.setenv("XTABLES_LIBDIR", "/usr/lib/xtables")  # left alone when set
    with pytest.raises(LibiptcUnavailable, match="pip install python-iptables"):
        load_iptc()
    with pytest.raises(LibiptcUnavailable):
        open_backend(IptablesBackend.LIBIPTC, runner=ScriptedRunner())


# --- streaming restore input ------------------------------------------------------------------


def test_several_input_texts_are_streamed_in_order_in_slices() -> None:
    big = "x" * (STDIN_SLICE * 2 + 17) + "\n"
    texts = ("*nat\nCOMMIT\n", big, "*filter\nCOMMIT\n")
    result = run_command(["cat"], texts, timeout=60)
    assert result.ok and result.stdout == "".join(texts)


def test_a_tool_that_exits_before_reading_its_input_reports_its_own_status() -> None:
    big = ("y" * 1000 + "\n") * 5000  # more than a pipe holds
    result = run_command(["sh", "-c", "echo 'line: 2 failed' >&2; exit 2"], (big, big),
                         timeout=60)
    assert (result.returncode, result.stderr.strip()) == (2, "line: 2 failed")
    assert run_command(["no-such-program-kproxy"], ("a",)).returncode == 127


def test_restore_errors_point_at_the_line_across_tables() -> None:
    runner = ScriptedRunner()
    runner.answer("restore", 1, stderr="iptables-restore: line 5 failed\n")
    backend = RestoreBackend(IptablesBackend.LEGACY, runner=runner)
    payloads = {Table.NAT: "*nat\n:KPROXY-A - [0:0]\nCOMMIT\n",
                Table.FILTER: "*filter\n-A KPROXY-NOPE -j ACCEPT\nCOMMIT\n"}
    with pytest.raises(RestoreError) as caught:
        backend.restore_all(IPFamily.IPV4, payloads)
    assert (caught.value.line_number, caught.value.line) == (5, "-A KPROXY-NOPE -j ACCEPT")
    assert payload_line(tuple(payloads.values()), 7) is None


def test_nft_reads_chain_names_with_nft_and_builtin_chains_one_by_one() -> None:
    runner = ScriptedRunner()
    runner.answer("nft list chains ip", stdout=(
        "table ip nat {\n\tchain KPROXY-SERVICES {\n\t}\n\tchain PREROUTING {\n"
        "\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t}\n}\n"))
    runner.answer("-S PREROUTING", stdout=(
        "-P PREROUTING ACCEPT\n"
        '-A PREROUTING -m comment --comment "kproxy service portals" -j KPROXY-SERVICES\n'))
    backend = RestoreBackend(IptablesBackend.NFT, runner=runner)
    tables = backend.read_tables(IPFamily.IPV4)
    assert set(tables) == {Table.NAT}
    assert tables[Table.NAT].kproxy_chains == {"KPROXY-SERVICES"}
    assert tables[Table.NAT].builtin_rules == {
        "PREROUTING": ('-m comment --comment "kproxy service portals" -j KPROXY-SERVICES',)}
    assert [argv[-4:] for argv, _ in runner.calls] == [
        ["nft", "list", "chains", "ip"], ["-t", "nat", "-S", "PREROUTING"]]
    assert backend.chunking is not None
    assert RestoreBackend(IptablesBackend.LEGACY, runner=runner).chunking is None


def test_nft_without_the_nft_tool_reads_with_iptables_nft_save() -> None:
    runner = ScriptedRunner()
    runner.answer("nft list chains", 127, stderr="No such file or directory")
    runner.answer("iptables-nft-save", stdout="*nat\n:PREROUTING ACCEPT [0:0]\n"
                                              ":KPROXY-X - [0:0]\nCOMMIT\n")
    backend = RestoreBackend(IptablesBackend.NFT, runner=runner)
    assert backend.read_tables(IPFamily.IPV4)[Table.NAT].kproxy_chains == {"KPROXY-X"}
