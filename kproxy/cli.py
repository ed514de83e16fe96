"""The ``kproxy`` command: ``run``, ``rules``, ``cleanup``, ``devapi`` and ``demo``.

Imports stay light: a subcommand's machinery (the proxy runtime, the dev API server) is
imported only when that subcommand runs.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from kproxy import __version__
from kproxy.config import (
    ConfigError,
    ProxyConfig,
    ProxyMode,
    add_run_flags,
    config_from_args,
    normalise_argv,
)
from kproxy.logsetup import configure_logging

log = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace], int]

# Subcommands whose module (and its flags) is imported only when that subcommand runs.
LAZY_COMMANDS = {
    "devapi": ("kproxy.devcluster.apiserver.command",
               "serve an in-memory Kubernetes API for tests and demos"),
    "demo": ("kproxy.devcluster.demo",
             "run a 2-node dev cluster in network namespaces and show kproxy at work"),
}
USAGE_ERROR = 2
_RUN_EPILOG = (
    "Flags follow kube-proxy's syntax: --flag value, --flag=value, booleans as --flag or "
    "--flag=true|false, durations as 30s, 1m0s or 500ms."
)
# Subcommands that take `kproxy run`'s flags (kube-proxy's, in pflag syntax).
FLAG_COMMANDS = ("run", "rules", "cleanup")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    command = _selected_command(arguments)
    if command in FLAG_COMMANDS:
        # pflag syntax for run's flags (see kproxy.config.flags); the rest is plain argparse.
        position = arguments.index(command) + 1
        arguments = arguments[:position] + normalise_argv(arguments[position:])
    parser = build_parser(load=command)
    try:
        args, extra = parser.parse_known_args(arguments)
        if extra and not getattr(args, "takes_any_arguments", False):
            command_parser: argparse.ArgumentParser = getattr(args, "command_parser", parser)
            command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exit_request:
        return _exit_code(exit_request)
    handler: Handler = args.handler
    return handler(args)


def build_parser(*, load: str | None = None) -> argparse.ArgumentParser:
    """The command line; a lazy subcommand's flags are loaded only when it is ``load``."""
    parser = argparse.ArgumentParser(
        prog="kproxy",
        description="A Kubernetes service proxy: a drop-in replacement for kube-proxy.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"kproxy {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="run the proxy on this node (kube-proxy's flags and config file)",
        description="Run the proxy on this node.",
        epilog=_RUN_EPILOG,
        usage="kproxy run [flags]",
        allow_abbrev=False,
    )
    add_run_flags(run)
    run.set_defaults(handler=run_command, command_parser=run)

    rules = commands.add_parser(
        "rules",
        help="print the iptables-restore payload a full sync would write (needs --from-file; "
        "no root, no kernel)",
        usage="kproxy rules --from-file FILE [flags]",
        allow_abbrev=False,
    )
    add_run_flags(rules)
    rules.set_defaults(handler=rules_command, command_parser=rules)
    cleanup = commands.add_parser(
        "cleanup",
        help="remove every rule kproxy installed (either mode) and nothing else, then exit",
        usage="kproxy cleanup [--iptables-backend MODE] [flags]",
        allow_abbrev=False,
    )
    add_run_flags(cleanup)
    cleanup.set_defaults(handler=cleanup_command, command_parser=cleanup)
    for name in LAZY_COMMANDS:
        _add_lazy(commands, name, load=load == name)
    return parser


def run_command(args: argparse.Namespace) -> int:
    config = _configured(args)
    if config is None:
        return USAGE_ERROR
    for notice in config.notices:
        log.log(notice.level, "%s", notice.message)
    if config.cleanup_and_exit:
        return _cleanup(config)
    if config.init_only:
        log.info("--init-only: kproxy needs no privileged initialisation; exiting")
        return 0
    return _run_proxy(config)


def _configured(args: argparse.Namespace) -> ProxyConfig | None:
    try:
        config = config_from_args(args)
    except ConfigError as error:
        print(f"kproxy: {error}", file=sys.stderr)
        return None
    configure_logging(config.logging_format, config.verbosity)
    return config


def rules_command(args: argparse.Namespace) -> int:
    config = _configured(args)
    if config is None:
        return USAGE_ERROR
    if not config.from_file:
        return _fail("kproxy rules: --from-file FILE is required")
    from kproxy.gctuning import one_shot_collector
    from kproxy.iptables.rulescmd import print_rules
    from kproxy.objectfile import ObjectFileError

    try:
        with one_shot_collector():
            print_rules(config, sys.stdout)
    except ObjectFileError as error:
        print(f"kproxy rules: {error}", file=sys.stderr)
        return 1
    return 0


def cleanup_command(args: argparse.Namespace) -> int:
    config = _configured(args)
    return USAGE_ERROR if config is None else _cleanup(config)


def _cleanup(config: ProxyConfig) -> int:
    from kproxy.iptables.backend import BackendError, open_backend
    from kproxy.iptables.cleanup import cleanup

    try:
        backend = open_backend(config.iptables_backend)
        report = cleanup(backend, backend.families())
    except BackendError as error:
        print(f"kproxy cleanup: {error}", file=sys.stderr)
        return 1
    log.info("cleanup: %s", report)
    return 0


def _run_proxy(config: ProxyConfig) -> int:
    try:
        app = importlib.import_module("kproxy.app")
    except ModuleNotFoundError as error:
        if error.name != "kproxy.app":
            raise
        print("kproxy: the proxy runtime (kproxy.app) is not available", file=sys.stderr)
        return 1
    if config.proxy_mode is ProxyMode.USERSPACE:
        # The relays run on the event loop: uvloop's costs less per wake-up, when installed.
        from kproxy.userspace.eventloop import use_fast_event_loop

        use_fast_event_loop()
    try:
        return int(asyncio.run(app.run_proxy(config)))
    except KeyboardInterrupt:
        return 130


def _add_lazy(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, *, load: bool
) -> None:
    module_name, help_text = LAZY_COMMANDS[name]
    command = commands.add_parser(name, help=help_text, description=help_text)
    if not load:
        # Only listed: `kproxy NAME ...` loads the real parser (load=True).
        command.set_defaults(handler=lambda _args: _fail(f"kproxy {name}: not loaded"))
        return
    try:
        module: ModuleType = importlib.import_module(module_name)
    except ImportError as error:
        unavailable = f"kproxy {name}: not available ({error})"
        command.set_defaults(handler=lambda _args: _fail(unavailable), takes_any_arguments=True)
        return
    module.add_arguments(command)
    command.set_defaults(handler=lambda args: int(module.run(args)), command_parser=command)


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return USAGE_ERROR


def _selected_command(arguments: Sequence[str]) -> str | None:
    # The top-level options (--help, --version) take no values, so the first
    # non-option argument is the subcommand.
    return next((argument for argument in arguments if not argument.startswith("-")), None)


def _exit_code(exit_request: SystemExit) -> int:
    code = exit_request.code
    if code is None:
        return 0
    return code if isinstance(code, int) else USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
