"""Loaded by Tinybird's clients in the tests (PYTHONPATH): nothing leaves the machine.

Tinybird's CLIs look up Tinybird's public hosts and the package index on start (version
checks, regions, telemetry). This refuses every name lookup and connection that is not to
the loopback interface, so such a call fails fast instead of reaching out.
"""

import ipaddress
import socket

_getaddrinfo = socket.getaddrinfo
_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def _loopback(host: object) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode()
    if not isinstance(host, str):
        return False
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _refuse(host: object) -> None:
    raise socket.gaierror(socket.EAI_NONAME, f"non-loopback address {host!r} blocked in tests")


def getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
    if not _loopback(host):
        _refuse(host)
    return _getaddrinfo(host, *args, **kwargs)


def _checked(address: object) -> None:
    if isinstance(address, tuple) and address and not _loopback(address[0]):
        raise ConnectionRefusedError(f"connection to {address!r} blocked in tests")


def connect(self, address):  # type: ignore[no-untyped-def]
    _checked(address)
    return _connect(self, address)


def connect_ex(self, address):  # type: ignore[no-untyped-def]
    _checked(address)
    return _connect_ex(self, address)


def gethostbyname(host):  # type: ignore[no-untyped-def]
    if not _loopback(host):
        _refuse(host)
    return "127.0.0.1" if host.lower() in _LOCAL_NAMES else host


socket.getaddrinfo = getaddrinfo
socket.gethostbyname = gethostbyname
socket.socket.connect = connect  # type: ignore[method-assign]
socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
