"""The ``kproxy devapi`` subcommand: run the dev API server until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from kproxy.devcluster.apiserver.access import REFUSALS_PATH, AccessControl
from kproxy.devcluster.apiserver.errors import ApiError
from kproxy.devcluster.apiserver.manifests import ManifestError, read_manifests
from kproxy.devcluster.apiserver.rbac import Policy, RbacError
from kproxy.devcluster.apiserver.server import DevApiServer
from kproxy.devcluster.apiserver.store import DEFAULT_SERVICE_CIDRS
from kproxy.devcluster.apiserver.tokenrotation import REFRESH_FRACTION, TokenRotator

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_RBAC_USER = "system:serviceaccount:kube-system:kproxy"


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6HOST]:PORT`` (port 0 picks a free one)."""
    host, colon, port_text = text.rpartition(":")
    if not colon or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port in {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    return host, port


def parse_cidrs(text: str) -> list[str]:
    cidrs = [part.strip() for part in text.split(",") if part.strip()]
    if not 1 <= len(cidrs) <= 2:
        raise argparse.ArgumentTypeError("give one service CIDR, or an IPv4 and an IPv6 one")
    return cidrs


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        type=parse_listen,
        default=parse_listen(DEFAULT_LISTEN),
        metavar="HOST:PORT",
        help=f"address to serve plain HTTP on (default {DEFAULT_LISTEN}; port 0: any free)",
    )
    parser.add_argument(
        "--listen-unix",
        metavar="PATH",
        help="also serve on this Unix socket (reachable from any network namespace)",
    )
    parser.add_argument(
        "--load",
        action="append",
        default=[],
        metavar="FILE.yaml",
        help="create the objects in this YAML file at start (repeatable)",
    )
    parser.add_argument(
        "--write-kubeconfig",
        metavar="PATH",
        help="write a kubeconfig for this server (for kubectl and kproxy)",
    )
    parser.add_argument(
        "--state-file",
        metavar="PATH",
        help="load objects from PATH at start and save them there while running and on exit",
    )
    parser.add_argument(
        "--service-cidr",
        type=parse_cidrs,
        default=list(DEFAULT_SERVICE_CIDRS),
        metavar="CIDR[,CIDR6]",
        help="ClusterIP range(s); two of different families make the cluster dual-stack "
        f"(default {','.join(DEFAULT_SERVICE_CIDRS)})",
    )
    parser.add_argument(
        "--rbac",
        action="append",
        default=[],
        metavar="FILE.yaml",
        help="enforce authentication and the Roles, ClusterRoles and bindings in this file "
        "(repeatable): TCP requests need a user's bearer token and RBAC's permission (401 / "
        f"403 otherwise); the Unix socket is the admin's. Refusals: GET {REFUSALS_PATH}",
    )
    parser.add_argument(
        "--user",
        metavar="NAME",
        help=f"with --rbac: the user whose token --write-kubeconfig writes "
        f"(default {DEFAULT_RBAC_USER})",
    )
    parser.add_argument(
        "--token",
        metavar="TOKEN",
        help="with --rbac: that user's bearer token (default: a random one)",
    )
    parser.add_argument(
        "--no-validation",
        dest="validate",
        action="store_false",
        help="store Services, EndpointSlices and Nodes that validation refuses exactly as sent "
        "(as a buggy or hostile admission chain could); only a name is still required",
    )
    parser.add_argument(
        "--token-file",
        metavar="PATH",
        help="with --rbac: rotate the user's token as the kubelet rotates a projected "
        "ServiceAccount token: write a fresh one to PATH at start and after "
        f"{REFRESH_FRACTION:.0%} of --token-ttl, each accepted for --token-ttl; "
        "--write-kubeconfig then names PATH as the user's tokenFile",
    )
    parser.add_argument(
        "--token-ttl",
        type=positive_seconds,
        default=3600.0,
        metavar="SECONDS",
        help="with --token-file: lifetime of each token (default 3600, the kubelet's)",
    )
    parser.add_argument(
        "--bookmark-interval",
        type=positive_seconds,
        default=60.0,
        metavar="SECONDS",
        help="how often watches that allow bookmarks get one (default 60)",
    )


def access_control(
    rbac_files: list[str], user: str | None, token: str | None
) -> AccessControl | None:
    """The access rules of ``--rbac``/``--user``/``--token``; None when not enforcing."""
    if not rbac_files:
        if user or token:
            raise ValueError("--user and --token need --rbac")
        return None
    documents = [document for path in rbac_files for document in read_manifests(path)]
    access = AccessControl(Policy.from_documents(documents))
    access.add_user(user or DEFAULT_RBAC_USER, token)
    return access


def token_rotator(
    access: AccessControl | None, args: argparse.Namespace
) -> TokenRotator | None:
    """The ``--token-file``/``--token-ttl`` rotation; None without ``--token-file``."""
    if not args.token_file:
        return None
    if access is None or args.token:
        raise ValueError("--token-file needs --rbac, and replaces --token")
    return TokenRotator(access, args.user or DEFAULT_RBAC_USER, args.token_file, args.token_ttl)


async def serve(args: argparse.Namespace) -> int:
    access = access_control(args.rbac, args.user, args.token)
    rotator = token_rotator(access, args)
    rotating: asyncio.Task[None] | None = None
    server = DevApiServer(
        bookmark_interval=args.bookmark_interval,
        service_cidrs=args.service_cidr,
        state_file=args.state_file,
        access=access,
        validate=args.validate,
    )
    host, port = args.listen
    await server.start(host, port, unix_path=args.listen_unix)
    try:
        for path in args.load:
            objects = read_manifests(path)
            server.load_objects(objects)
            log.info("loaded %d objects from %s", len(objects), path)
        if rotator is not None:
            rotator.rotate()  # the file exists before the kubeconfig names it
            rotating = asyncio.create_task(_rotate_later(rotator))
        if args.write_kubeconfig:
            token_file = str(rotator.path.absolute()) if rotator is not None else None
            server.write_kubeconfig(args.write_kubeconfig, token_file=token_file)
            log.info("wrote kubeconfig %s", args.write_kubeconfig)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        # SIGUSR1: expire every watcher's resourceVersion (as etcd compaction does), so that
        # every client relists after a 410 Gone. For testing clients' recovery.
        loop.add_signal_handler(signal.SIGUSR1, lambda: _expire(server))
        try:
            await stopping.wait()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
                loop.remove_signal_handler(signum)
        log.info("shutting down")
    finally:
        if rotating is not None:
            rotating.cancel()
        await server.stop()
        if access is not None:
            log.info("%d forbidden and %d unauthorized requests",
                     access.forbidden_count, access.unauthorized_count)
    return 0


async def _rotate_later(rotator: TokenRotator) -> None:
    while True:
        await asyncio.sleep(rotator.ttl * REFRESH_FRACTION)
        rotator.rotate()


def _expire(server: DevApiServer) -> None:
    closed = server.expire_watches()
    log.info("SIGUSR1: history expired at resourceVersion %d; %d watches ended",
             server.store.resource_version, closed)


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(serve(args))
    except (ManifestError, ApiError, OSError, RbacError, ValueError) as error:
        log.error("devapi: %s", error)
        return 1
