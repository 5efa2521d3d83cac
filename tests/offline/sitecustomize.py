"""Keeps the test suite on this machine: every connection or name lookup that is not
loopback fails loudly, in the test process and in every Python subprocess it starts (this
directory is on their ``PYTHONPATH``, so Python imports this module at start-up).

A blocked attempt raises ``OSError`` where it happens and is appended to the file named by
``OFFLINE_GUARD_LOG``, which the session checks at the end: an attempt that a
client swallows (ours retries transport errors) still fails the run.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import traceback
from typing import Any

_LOCAL_NAMES = {None, "", "localhost", "localhost.localdomain", "ip6-localhost"}


def _is_local(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if host in _LOCAL_NAMES or (isinstance(host, str) and host.endswith(".localhost")):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _blocked(what: str) -> OSError:
    message = f"tinybird-export tests: {what} blocked: the suite must not leave the machine"
    record = os.environ.get("OFFLINE_GUARD_LOG")
    if record:
        stack = "".join(traceback.format_stack(limit=12)[:-2])
        with open(record, "a", encoding="utf-8") as file:
            file.write(f"{message} (pid {os.getpid()})\n{stack}\n")
    return OSError(message)


_getaddrinfo = socket.getaddrinfo
_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if not _is_local(host):
        raise _blocked(f"name lookup of {host!r}")
    return _getaddrinfo(host, *args, **kwargs)


def _check_address(sock: socket.socket, address: Any) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
        raise _blocked(f"connection to {address[0]!r}")


def _guarded_connect(self: socket.socket, address: Any) -> None:
    _check_address(self, address)
    _connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    _check_address(self, address)
    return _connect_ex(self, address)


socket.getaddrinfo = _guarded_getaddrinfo
socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
