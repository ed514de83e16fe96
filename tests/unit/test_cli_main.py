"""``kproxy``'s command line: subcommands, exit codes, run's hand-off and logging setup."""

from __future__ import annotations

import argparse
import io
import json
import logging
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from kproxy import __version__
from kproxy.cli import LAZY_COMMANDS, main
from kproxy.config import LoggingFormat, ProxyConfig, ProxyMode
from kproxy.logsetup import (
    JsonLogFormatter,
    KlogTextFormatter,
    configure_logging,
    verbosity_level,
)

DEVAPI_MODULE = LAZY_COMMANDS["devapi"][0]


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)


class FakeApp:
    """Stands in for kproxy.app: records the config it is given."""

    def __init__(self, exit_code: int = 0) -> None:
        self.exit_code = exit_code
        self.configs: list[ProxyConfig] = []

    async def run_proxy(self, config: ProxyConfig) -> int:
        self.configs.append(config)
        return self.exit_code


@pytest.fixture
def fake_app(monkeypatch: pytest.MonkeyPatch) -> FakeApp:
    app = FakeApp()
    module = types.ModuleType("kproxy.app")
    module.run_proxy = app.run_proxy  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kproxy.app", module)
    return app


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("run", "rules", "cleanup", "devapi", "demo"):
        assert f"    {command} " in out
    assert "not yet available" not in out


def test_help_lists_devapi_even_when_it_cannot_be_imported(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, DEVAPI_MODULE, None)
    assert main(["--help"]) == 0
    assert "devapi" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"kproxy {__version__}\n"


def test_no_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "command" in capsys.readouterr().err


def test_run_help_shows_kube_proxy_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--masquerade-all[=true|false]" in out
    assert "--iptables-sync-period DURATION" in out
    assert "--conntrack-max-per-core" in out  # listed as accepted for compatibility


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--iptables-masquerade-bit=40"],
            "kproxy: --iptables-masquerade-bit: must be an integer between 0 and 31, got 40",
        ),
        (["--proxy-mode", "ipvs"], "kproxy: --proxy-mode: kproxy implements the iptables"),
        (["--masquerade-all=maybe"], "kproxy: --masquerade-all: must be true or false"),
        (["--iptables-sync-period=30"], "kproxy: --iptables-sync-period: must be a duration"),
        (["--healthz-bind-address=host:1"], "kproxy: --healthz-bind-address: must be an IP"),
        (["--detect-local-mode=BridgeInterface"], "kproxy: --pod-bridge-interface: must be set"),
        (["-v", "x"], "kproxy: --v: must be a non-negative integer"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--masquerade-all", "false"], "unrecognized arguments: false"),
        (["--masq"], "unrecognized arguments: --masq"),
    ],
)
def test_run_flag_errors_exit_2(
    argv: list[str], message: str, fake_app: FakeApp, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--hostname-override=n", *argv]) == 2
    assert message in capsys.readouterr().err
    assert fake_app.configs == []


def test_run_config_file_error_exits_2(
    tmp_path: Path, fake_app: FakeApp, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "kp.yaml"
    path.write_text(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
        "iptables:\n  masqueradeBit: 40\n"
    )
    assert main(["run", f"--config={path}"]) == 2
    assert capsys.readouterr().err == (
        f"kproxy: config {path}: iptables.masqueradeBit: must be an integer between 0 and 31, "
        "got 40\n"
    )
    assert fake_app.configs == []


def test_run_hands_the_config_to_run_proxy(fake_app: FakeApp) -> None:
    fake_app.exit_code = 3
    argv = ["run", "--hostname-override=Node-1", "--proxy-mode", "userspace", "--once"]
    assert main(argv) == 3
    [config] = fake_app.configs
    assert (config.hostname, config.proxy_mode, config.once) == (
        "node-1",
        ProxyMode.USERSPACE,
        True,
    )


def test_run_logs_compatibility_flags_once(
    fake_app: FakeApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    argv = ["run", "--hostname-override=n", "--profiling", "--oom-score-adj", "-999"]
    assert main([*argv, "--profiling=false"]) == 0
    warnings = [
        record.getMessage() for record in caplog.records if record.levelno == logging.WARNING
    ]
    suffix = "is accepted for compatibility with kube-proxy and has no effect in kproxy"
    assert warnings == [f"flag --profiling {suffix}", f"flag --oom-score-adj {suffix}"]
    assert len(fake_app.configs) == 1


def test_run_without_the_runtime_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "kproxy.app", None)
    assert main(["run", "--hostname-override=n"]) == 1
    assert "the proxy runtime (kproxy.app) is not available" in capsys.readouterr().err


def test_init_only_validates_and_exits(fake_app: FakeApp) -> None:
    assert main(["run", "--hostname-override=n", "--init-only"]) == 0
    assert fake_app.configs == []


def test_rules_without_from_file_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "--hostname-override=n"]) == 2
    assert "--from-file FILE is required" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["rules", "cleanup"])
def test_rules_and_cleanup_reject_unknown_flags(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--anything", "x"]) == 2
    assert "--anything" in capsys.readouterr().err


def test_devapi_without_its_module_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, DEVAPI_MODULE, None)
    assert main(["devapi", "--port", "0"]) == 2
    assert "kproxy devapi: not available" in capsys.readouterr().err


def test_devapi_delegates_to_its_module(monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[argparse.Namespace] = []
    module = types.ModuleType(DEVAPI_MODULE)

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--port", type=int, default=0)

    def run(args: argparse.Namespace) -> int:
        received.append(args)
        return 5

    module.add_arguments = add_arguments  # type: ignore[attr-defined]
    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, DEVAPI_MODULE, module)
    assert main(["devapi", "--port", "8080"]) == 5
    assert [args.port for args in received] == [8080]
    assert main(["devapi", "--unknown"]) == 2


def test_cli_import_stays_light() -> None:
    code = (
        "import sys, kproxy.cli; "
        "heavy = [m for m in ('kproxy.app', 'aiohttp', 'kubernetes_asyncio') if m in sys.modules]; "
        "print(heavy)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


# -- logging ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verbosity", "level"), [(0, logging.INFO), (1, logging.INFO - 1), (4, 16), (10, 10), (50, 1)]
)
def test_verbosity_maps_to_levels_below_info(verbosity: int, level: int) -> None:
    assert verbosity_level(verbosity) == level


def _emit(logging_format: LoggingFormat, verbosity: int) -> list[str]:
    stream = io.StringIO()
    configure_logging(logging_format, verbosity, stream=stream)
    log = logging.getLogger("kproxy.test")
    log.info("always")
    log.log(verbosity_level(2), "detail")
    log.warning("careful")
    return stream.getvalue().splitlines()


def test_text_logging_uses_klog_layout_and_verbosity() -> None:
    quiet = _emit(LoggingFormat.TEXT, 0)
    assert [line.split("] ", 1)[1] for line in quiet] == ["always", "careful"]
    assert quiet[0].startswith("I") and quiet[1].startswith("W")
    assert "test_cli_main.py:" in quiet[0]
    chatty = _emit(LoggingFormat.TEXT, 2)
    assert [line.split("] ", 1)[1] for line in chatty] == ["always", "detail", "careful"]


def test_json_logging_writes_one_object_per_line() -> None:
    entries = [json.loads(line) for line in _emit(LoggingFormat.JSON, 2)]
    assert [entry["msg"] for entry in entries] == ["always", "detail", "careful"]
    assert [entry.get("v") for entry in entries] == [0, 2, None]
    assert entries[2]["level"] == "warning"
    assert all(isinstance(entry["ts"], float) for entry in entries)


def test_configure_logging_twice_keeps_one_handler() -> None:
    stream = io.StringIO()
    configure_logging(LoggingFormat.TEXT, 0, stream=io.StringIO())
    configure_logging(LoggingFormat.JSON, 0, stream=stream)
    logging.getLogger("kproxy.test").info("once")
    assert len(stream.getvalue().splitlines()) == 1
    formatters = [type(handler.formatter) for handler in logging.getLogger().handlers]
    assert KlogTextFormatter not in formatters
    assert JsonLogFormatter in formatters
