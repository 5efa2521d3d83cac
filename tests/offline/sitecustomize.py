"""Keeps the test suite on this machine: every connection or name lookup that is not
loopback fails, in the test process and in every Python subprocess it starts (this
directory is on their ``PYTHONPATH``, so Python imports this module at start-up), Tinybird's
own clients included.

A refused lookup raises ``socket.gaierror`` and a refused connection
``ConnectionRefusedError``, as a closed network would, so that clients fail fast. Each
attempt is also appended to the file named by ``OFFLINE_GUARD_LOG``, which the session
checks at the end: an attempt of ours that a client swallowed (the package retries
transport errors) still fails the run. Third-party clients, whose start-up checks are
expected to try, run with the variable empty.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import traceback
from typing import Any

_LOCAL_NAMES = {None, "", "localhost", "localhost.localdomain", "ip6-localhost"}


def _loopback(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if isinstance(host, str):
        host = host.lower()
    if host in _LOCAL_NAMES or (isinstance(host, str) and host.endswith(".localhost")):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _record(what: str) -> str:
    message = f"{what} blocked in tests: the suite must not leave the machine"
    log = os.environ.get("OFFLINE_GUARD_LOG")
    if log:
        stack = "".join(traceback.format_stack(limit=12)[:-2])
        with open(log, "a", encoding="utf-8") as file:
            file.write(f"{message} (pid {os.getpid()})\n{stack}\n")
    return message


_getaddrinfo = socket.getaddrinfo
_gethostbyname = socket.gethostbyname
_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if not _loopback(host):
        raise socket.gaierror(socket.EAI_NONAME, _record(f"name lookup of {host!r}"))
    return _getaddrinfo(host, *args, **kwargs)


def gethostbyname(host: str) -> str:
    if not _loopback(host):
        raise socket.gaierror(socket.EAI_NONAME, _record(f"name lookup of {host!r}"))
    return _gethostbyname(host)


def _checked(address: Any) -> None:
    if isinstance(address, tuple) and address and not _loopback(address[0]):
        raise ConnectionRefusedError(_record(f"connection to {address[0]!r}"))


def connect(self: socket.socket, address: Any) -> None:
    _checked(address)
    _connect(self, address)


def connect_ex(self: socket.socket, address: Any) -> int:
    _checked(address)
    return _connect_ex(self, address)


socket.getaddrinfo = getaddrinfo
socket.gethostbyname = gethostbyname
socket.socket.connect = connect  # type: ignore[method-assign,assignment]
socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]
