"""The first connection to each host, which a ``fork()`` must not land inside.

A first connection does what later ones find done: the resolver loads its modules (a
``dlopen``), and OpenSSL fetches the algorithms of the handshake (``EVP_KDF_fetch`` and
others, each under its method store's write lock, once per process). A fork while a
sender thread holds one of those locks leaves it held forever in the child, whose own
first handshake then hangs (4 of 281 children forked during a parent's first request, with
the TLS context already built at construction; 58 of 150 when the context was built on
the sender too). Later connections take read locks only, which a fork cannot wedge.

So the process's ``before`` fork hook waits for the first connections under way, at most
until their attempt's deadline and never more than ``MAX_WAIT``: a fork at start-up may
wait a few milliseconds, one later never waits. No lock is held across the fork: the wait
ends before it, and the child starts with a fresh state.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Final

MAX_WAIT: Final = 1.0
"""Seconds a fork waits at most for a first connection: a handshake with a healthy server
takes milliseconds. One slower than that waits for the server, and OpenSSL holds none of
its locks while it waits: only a fork that lands in the milliseconds of work after the
answer could still be unlucky."""


class FirstConnects:
    """First connections under way, by thread, and the hosts already connected once."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._under_way: dict[int, float] = {}  # thread ident -> until when to wait
        self._connected: set[str] = set()

    @contextlib.contextmanager
    def connecting(self, host: str, deadline: float | None) -> Iterator[None]:
        """Around a connection to ``host`` (resolve, connect, TLS handshake): a fork waits
        for it while ``host`` was never connected to in this process.
        """
        if host in self._connected:  # a set lookup: every later connection
            yield
            return
        ident = threading.get_ident()
        until = time.monotonic() + MAX_WAIT
        with self._changed:
            self._under_way[ident] = until if deadline is None else min(deadline, until)
        connected = False
        try:
            yield
            connected = True
        finally:
            with self._changed:
                self._under_way.pop(ident, None)
                if connected:
                    self._connected.add(host)
                self._changed.notify_all()

    def wait(self) -> None:
        """Before a fork: wait for the first connections of other threads to end, each at
        most until its deadline.
        """
        me = threading.get_ident()
        with self._changed:
            while True:
                others = [until for ident, until in self._under_way.items() if ident != me]
                remaining = max(others, default=0.0) - time.monotonic()
                if remaining <= 0:
                    return
                self._changed.wait(remaining)

    def after_fork_in_child(self) -> None:
        """The parent's connecting threads do not exist here (the hosts it connected to
        stay known: OpenSSL's fetched algorithms are inherited).
        """
        connected = self._connected
        self._reset()
        self._connected = set(connected)


FIRST_CONNECTS = FirstConnects()
