"""``python -m kproxy.devcluster.apiserver``: the ``kproxy devapi`` command on its own."""

from __future__ import annotations

import argparse
import logging
import sys

from kproxy.devcluster.apiserver.command import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kproxy.devcluster.apiserver",
        description="Run the in-memory dev Kubernetes API server.",
    )
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("aiohttp").setLevel(logging.WARNING)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
