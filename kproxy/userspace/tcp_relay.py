"""Byte relay between two connected TCP sockets: zero-copy through pipes where the kernel has
splice(2), recv/send through a reused buffer otherwise.

The relay is driven by event-loop callbacks rather than coroutines: a coroutine per
direction would cost a task, a future per wake-up and several KiB per connection. Each
direction keeps one reader registered while it can make progress; only when the
destination is full does it swap to waiting for the destination (the source is then not
read, so the sender's TCP window closes: that is what bounds memory per connection).

A direction holds a pipe (or buffer) only while bytes are in flight; idle connections
hold none, so 10,000 idle connections cost 20,000 sockets and no pipes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import struct
import sys
from collections.abc import Callable

from kproxy.userspace.stats import UserspaceStats
from kproxy.userspace.targets import Target

SPLICE_AVAILABLE = sys.platform == "linux" and hasattr(os, "splice")
_SPLICE_FLAGS = (
    (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if SPLICE_AVAILABLE else 0
)
# Reads (each followed by its writes) per readiness event while the source keeps filling the
# carrier: fewer trips through the event loop for bulk transfers.
_READS_PER_WAKEUP = 8
# Free carriers kept for reuse; beyond this, a released one is closed.
_POOL_KEEP = 64
# An error on one of these means the peer went away: the other side is reset, not failed.
_GONE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, TimeoutError)


class PipePool:
    """Non-blocking pipes of one size, lent to a direction while bytes are in them."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[tuple[int, int]] = []

    def get(self) -> tuple[int, int]:
        if self._free:
            return self._free.pop()
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # The kernel may grant less than asked (pipe-max-size, per-user pipe quota): the
        # relay works with whatever capacity the pipe has.
        with contextlib.suppress(OSError):
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, self.size)
        return read_end, write_end

    def put(self, pipe: tuple[int, int]) -> None:
        """Take back an empty pipe."""
        if len(self._free) < _POOL_KEEP:
            self._free.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    def discard(self, pipe: tuple[int, int]) -> None:
        """Close a pipe that may still hold bytes (its connection is gone)."""
        os.close(pipe[0])
        os.close(pipe[1])

    def close(self) -> None:
        for pipe in self._free:
            self.discard(pipe)
        self._free.clear()


class BufferPool:
    """Byte buffers of one size for the recv/send fallback, lent like PipePool's pipes."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[memoryview] = []

    def get(self) -> memoryview:
        return self._free.pop() if self._free else memoryview(bytearray(self.size))

    def put(self, buffer: memoryview) -> None:
        if len(self._free) < _POOL_KEEP:
            self._free.append(buffer)

    def close(self) -> None:
        self._free.clear()


class _Direction:
    """One way of a relay: bytes from ``src`` to ``dst``."""

    __slots__ = (
        "_loop",
        "dst",
        "dst_fd",
        "eof",
        "pending",
        "reading",
        "relay",
        "src",
        "src_fd",
        "waiting",
    )

    def __init__(self, relay: TcpRelay, src: socket.socket, dst: socket.socket) -> None:
        self._loop = relay.loop
        self.relay = relay
        self.src = src
        self.dst = dst
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.pending = 0  # bytes read from src, not yet written to dst
        self.eof = False  # src sent FIN
        self.reading = False  # a reader is registered for src
        self.waiting = False  # a writer is registered for dst (it is full; src not read)

    def start(self) -> None:
        self._loop.add_reader(self.src_fd, self.on_readable)
        self.reading = True

    def on_readable(self) -> None:
        raise NotImplementedError

    def on_writable(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.waiting:
            self._loop.remove_writer(self.dst_fd)
            self.waiting = False
        if self.reading:
            self._loop.remove_reader(self.src_fd)
            self.reading = False

    def release(self) -> None:
        """Give back the carrier (relay closed)."""

    def _blocked(self) -> None:
        # dst is full: stop reading src until dst drains.
        self._loop.remove_reader(self.src_fd)
        self.reading = False
        self._loop.add_writer(self.dst_fd, self.on_writable)
        self.waiting = True

    def _unblocked(self) -> None:
        self._loop.remove_writer(self.dst_fd)
        self.waiting = False
        if self.eof:
            self._forward_eof()
        else:
            self._loop.add_reader(self.src_fd, self.on_readable)
            self.reading = True

    def _saw_eof(self) -> None:
        self._loop.remove_reader(self.src_fd)
        self.reading = False
        self.eof = True
        self._forward_eof()

    def _forward_eof(self) -> None:
        try:
            self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            self.relay.abort()
            return
        self.relay.direction_finished()


class _CopyDirection(_Direction):
    __slots__ = ("_buffers", "buffer", "offset")

    def __init__(
        self, relay: TcpRelay, src: socket.socket, dst: socket.socket, buffers: BufferPool
    ) -> None:
        super().__init__(relay, src, dst)
        self._buffers = buffers
        self.buffer: memoryview | None = None
        self.offset = 0

    def on_readable(self) -> None:
        self.relay.active = True
        pool = self._buffers
        buffer = self.buffer
        if buffer is None:
            buffer = self.buffer = pool.get()
        for _ in range(_READS_PER_WAKEUP):
            try:
                count = self.src.recv_into(buffer)
            except BlockingIOError:
                break
            except OSError:
                self.relay.abort()
                return
            if count == 0:
                pool.put(buffer)
                self.buffer = None
                self._saw_eof()
                return
            self.pending = count
            self.offset = 0
            if not self._flush(buffer, registered=False):
                return
            if count < pool.size:
                break
        pool.put(buffer)
        self.buffer = None

    def on_writable(self) -> None:
        self.relay.active = True
        assert self.buffer is not None
        self._flush(self.buffer, registered=True)

    def _flush(self, buffer: memoryview, registered: bool) -> bool:
        stats = self.relay.stats
        while self.pending:
            try:
                count = self.dst.send(buffer[self.offset : self.offset + self.pending])
            except BlockingIOError:
                if not registered:
                    self._blocked()
                return False
            except OSError:
                self.relay.abort()
                return False
            self.pending -= count
            self.offset += count
            stats.bytes_relayed += count
        if registered:
            self._buffers.put(buffer)
            self.buffer = None
            self._unblocked()
        return True

    def release(self) -> None:
        if self.buffer is not None:
            self._buffers.put(self.buffer)
            self.buffer = None


class _SpliceDirection(_CopyDirection):
    """Splices through a pipe; when no pipe can be made (out of descriptors), copies
    through a buffer instead, which needs no descriptor, so connections keep moving (and
    closing, which frees descriptors) rather than all waiting for one another."""

    __slots__ = ("_pool", "pipe")

    def __init__(
        self,
        relay: TcpRelay,
        src: socket.socket,
        dst: socket.socket,
        buffers: BufferPool,
        pipes: PipePool,
    ) -> None:
        super().__init__(relay, src, dst, buffers)
        self._pool = pipes
        self.pipe: tuple[int, int] | None = None

    def on_readable(self) -> None:
        self.relay.active = True
        pool = self._pool
        pipe = self.pipe
        if pipe is None:
            try:
                pipe = self.pipe = pool.get()
            except OSError:
                super().on_readable()
                return
        for _ in range(_READS_PER_WAKEUP):
            try:
                count = os.splice(self.src_fd, pipe[1], pool.size, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                break
            except OSError:
                self.relay.abort()
                return
            if count == 0:
                pool.put(pipe)
                self.pipe = None
                self._saw_eof()
                return
            self.pending = count
            if not self._flush_pipe(pipe, registered=False):
                return  # dst is full: waiting for it, the pipe still holds bytes
            if count < pool.size:
                break  # src is most likely drained: do not pay for a read that finds nothing
        pool.put(pipe)
        self.pipe = None

    def on_writable(self) -> None:
        if self.pipe is None:
            super().on_writable()  # the bytes waiting are in a buffer
            return
        self.relay.active = True
        self._flush_pipe(self.pipe, registered=True)

    def _flush_pipe(self, pipe: tuple[int, int], registered: bool) -> bool:
        """Move the pipe's bytes to dst; False if dst filled up first (now waited for)."""
        stats = self.relay.stats
        while self.pending:
            try:
                count = os.splice(pipe[0], self.dst_fd, self.pending, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                if not registered:
                    self._blocked()
                return False
            except OSError:
                self.relay.abort()
                return False
            self.pending -= count
            stats.bytes_relayed += count
        if registered:
            self._pool.put(pipe)
            self.pipe = None
            self._unblocked()
        return True

    def release(self) -> None:
        super().release()
        if self.pipe is not None:
            if self.pending:
                self._pool.discard(self.pipe)
            else:
                self._pool.put(self.pipe)
            self.pipe = None


class Carriers:
    """The pools a listener's relays share: pipes for splice, buffers for the fallback."""

    def __init__(self, size: int, use_splice: bool = SPLICE_AVAILABLE) -> None:
        if use_splice and not SPLICE_AVAILABLE:
            raise ValueError("splice(2) is not available on this platform")
        self.use_splice = use_splice
        self.pipes = PipePool(size)
        self.buffers = BufferPool(size)

    def close(self) -> None:
        self.pipes.close()
        self.buffers.close()


_LINGER_RESET = struct.pack("ii", 1, 0)


def reset_and_close(sock: socket.socket) -> None:
    """Close so that the peer gets an RST at once instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


class TcpRelay:
    """Relays one accepted client connection to one connected upstream socket."""

    __slots__ = (
        "_directions",
        "_finished",
        "_on_closed",
        "active",
        "client",
        "closed",
        "loop",
        "stats",
        "target",
        "upstream",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: socket.socket,
        upstream: socket.socket,
        target: Target,
        carriers: Carriers,
        stats: UserspaceStats,
        on_closed: Callable[[TcpRelay], None],
    ) -> None:
        self.loop = loop
        self.client = client
        self.upstream = upstream
        self.target = target
        self.stats = stats
        self._on_closed = on_closed
        self.active = True  # set on every event; the idle sweeper clears it
        self.closed = False
        self._finished = 0
        if carriers.use_splice:
            self._directions: tuple[_Direction, _Direction] = (
                _SpliceDirection(self, client, upstream, carriers.buffers, carriers.pipes),
                _SpliceDirection(self, upstream, client, carriers.buffers, carriers.pipes),
            )
        else:
            self._directions = (
                _CopyDirection(self, client, upstream, carriers.buffers),
                _CopyDirection(self, upstream, client, carriers.buffers),
            )

    def start(self) -> None:
        for direction in self._directions:
            direction.start()

    def direction_finished(self) -> None:
        # Both directions saw FIN and forwarded it: the conversation is over.
        self._finished += 1
        if self._finished == 2:
            self._close(reset=False)

    def abort(self) -> None:
        """One side failed or reset: reset the other side too, so it learns at once."""
        self._close(reset=True)

    def close(self) -> None:
        """Closed by the proxy (idle, endpoint removed, shutdown): both sides get an RST."""
        self._close(reset=True)

    def _close(self, reset: bool) -> None:
        if self.closed:
            return
        self.closed = True
        for direction in self._directions:
            direction.stop()
            direction.release()
        if reset:
            reset_and_close(self.client)
            reset_and_close(self.upstream)
        else:
            self.client.close()
            self.upstream.close()
        self._on_closed(self)
