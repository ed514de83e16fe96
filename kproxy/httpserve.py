"""Serving a small aiohttp application on one ``IP:port`` (the health and metrics servers)."""

from __future__ import annotations

from aiohttp import web

# How long a closing server waits for a request already being answered.
SHUTDOWN_SECONDS = 1.0


def split_listen_address(address: str) -> tuple[str, int]:
    """``IP:port`` or ``[IPv6]:port`` (as the configuration normalises them) -> (IP, port)."""
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ValueError(f"must be IP:port, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class ListeningApp:
    """One aiohttp application listening on one address; port 0 picks a free port."""

    def __init__(self, app: web.Application, address: str) -> None:
        self._app = app
        self.address = address
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        """Listen; raises OSError when the address cannot be bound (nothing is left open)."""
        host, port = split_listen_address(self.address)
        runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=SHUTDOWN_SECONDS)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = [a for a in runner.addresses if isinstance(a, tuple)]
        self.port = int(bound[0][1]) if bound else port

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
