"""A total deadline for each HTTP attempt, enforced on the socket.

urllib3's timeouts are per socket operation: a server that sends its headers one byte
every second, or trickles its body, keeps every read under the read timeout and the
attempt alive forever. So the connections of the package's pools wrap their socket, once
connected, in ``DeadlineSocket``: before each ``recv``/``send`` it sets the socket's timeout
to what is left of the attempt's deadline (never more than urllib3's own), and past it
raises ``AttemptExpired``. The deadline is the sending thread's, set by ``attempt`` around
one request, so the same pool serves the worker's threads and a caller's synchronous
flush alike, with no thread of its own.

The TLS handshake happens before the wrap; it is bounded by the connect timeout, which the
client caps at the deadline too.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, Final

import urllib3
import urllib3.connection
import urllib3.connectionpool

from tinybird_export._first_connect import FIRST_CONNECTS

_attempt = threading.local()


class AttemptExpired(TimeoutError):
    """The attempt's total deadline passed (a ``socket.timeout``, so urllib3 treats it as
    one).
    """


@contextlib.contextmanager
def attempt(deadline: float) -> Iterator[None]:
    """Bound every socket operation of the requests made inside by ``deadline``
    (``time.monotonic()``).
    """
    _attempt.deadline = deadline
    _attempt.awaited = False
    try:
        yield
    finally:
        _attempt.deadline = None


def answer_awaited() -> bool:
    """Whether this thread's last attempt sent its request whole and was reading the
    answer (http.client reads only once the body is written): if it failed then, the
    server may have stored the request.
    """
    return bool(getattr(_attempt, "awaited", False))


class DeadlineSocket:
    """A connected socket whose blocking calls end by the current attempt's deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._timeout = sock.gettimeout()

    def _arm(self) -> None:
        deadline = getattr(_attempt, "deadline", None)
        if deadline is None:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AttemptExpired("the attempt's deadline passed")
        timeout = self._timeout
        self._sock.settimeout(remaining if timeout is None or timeout > remaining else timeout)

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout
        self._sock.settimeout(timeout)

    def gettimeout(self) -> float | None:
        return self._timeout

    # Arguments passed on as given: SSLSocket's defaults differ from socket's.
    def recv_into(self, buffer: Any, *args: Any) -> int:
        _attempt.awaited = True
        self._arm()
        return self._sock.recv_into(buffer, *args)

    def recv(self, *args: Any) -> bytes:
        _attempt.awaited = True
        self._arm()
        return self._sock.recv(*args)

    def send(self, data: Any, *args: Any) -> int:
        self._arm()
        return self._sock.send(data, *args)

    def sendall(self, data: Any, *args: Any) -> None:
        view = memoryview(data).cast("B")
        while view:
            self._arm()
            view = view[self._sock.send(view, *args) :]

    def makefile(self, mode: str = "r", buffering: int | None = None, **_: Any) -> Any:
        """A buffered reader whose reads go through ``recv_into`` above (http.client
        reads the status line, headers and body through it).
        """
        self._sock._io_refs += 1  # type: ignore[attr-defined]  # as socket.makefile does
        raw = socket.SocketIO(self, "rb")  # type: ignore[arg-type]
        return io.BufferedReader(raw, buffering or io.DEFAULT_BUFFER_SIZE)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _HTTPConnection(urllib3.connection.HTTPConnection):
    def connect(self) -> None:
        # A fork must not land inside a first connection (_first_connect).
        with FIRST_CONNECTS.connecting(f"{self.host}:{self.port}", _current_deadline()):
            super().connect()
        self.sock = DeadlineSocket(self.sock)


class _HTTPSConnection(urllib3.connection.HTTPSConnection):
    def connect(self) -> None:
        with FIRST_CONNECTS.connecting(f"{self.host}:{self.port}", _current_deadline()):
            super().connect()  # the TLS handshake too
        self.sock = DeadlineSocket(self.sock)


def _current_deadline() -> float | None:
    deadline: float | None = getattr(_attempt, "deadline", None)
    return deadline


class _HTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


POOL_CLASSES: Final = {"http": _HTTPPool, "https": _HTTPSPool}
"""For ``PoolManager.pool_classes_by_scheme``: pools whose connections keep deadlines."""
