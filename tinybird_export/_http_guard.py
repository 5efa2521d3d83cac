"""Who may talk to the package's servers on a developer's machine (``tinybird-export local``
and ``testing.EventsServer``): the first layer of their HTTP handling, before any route.

A web page in the developer's browser is the attacker. It cannot read the answers of another
origin, but it can send requests, and it can reach this server under a name it controls:

- **DNS rebinding.** A page from ``http://evil.example:7181`` whose name then resolves to
  127.0.0.1 is same-origin with the server, and can read its answers (``/tokens``). The Host
  header gives it away: only requests addressed to ``localhost``, an IP address (a name that
  cannot be rebound) or the host the server was told to serve are answered, as hardened dev
  servers do (Vite's ``server.allowedHosts``, webpack-dev-server's ``allowedHosts``).
- **Cross-site requests.** A page can POST a form (``text/plain`` needs no preflight) or call
  ``fetch(..., {mode: "no-cors"})`` with the token in the URL. Browsers say where such a
  request comes from: ``Origin`` (every POST, every CORS request) and ``Sec-Fetch-Site``
  (every request, in current browsers). Only the server's own origin is allowed, for pages it
  serves itself; ``Sec-Fetch-Site: none`` is the user typing a URL. No CORS header is ever
  sent, so no other origin can read an answer either.

Clients outside the browser (Tinybird's CLIs and SDKs, curl, the package's own) send neither
header and are unaffected.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Collection
from email.message import Message

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_ALLOWED_SITES = frozenset({"same-origin", "none"})


def hostname(host: str) -> str:
    """The name of a ``Host`` header (``[::1]:7181`` is ``::1``), lowercased; empty when
    it does not parse.
    """
    try:
        return urllib.parse.urlsplit(f"//{host}").hostname or ""
    except ValueError:
        return ""


def host_allowed(host: str, names: Collection[str] = ()) -> bool:
    """Whether ``host`` (a ``Host`` header) names this server: a loopback name, an IP address,
    or one of ``names`` (the host it serves, as given).
    """
    name = hostname(host)
    if name in LOOPBACK_NAMES or name in names:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def refusal(headers: Message, names: Collection[str] = (), scheme: str = "http") -> str | None:
    """Why a request may not be answered (a 403 with this message), or None.

    Args:
        headers: The request's headers.
        names: Host names this server serves besides loopback ones and IP addresses.
        scheme: The server's scheme (its own pages' origin).
    """
    hosts = headers.get_all("Host") or []
    origins = headers.get_all("Origin") or []
    if len(hosts) > 1 or len(origins) > 1:
        return "one Host and at most one Origin header, please"
    host = hosts[0] if hosts else None
    if host is not None and not host_allowed(host, names):
        served = ", ".join(sorted({"localhost", "127.0.0.1", "[::1]", *names}))
        return (
            f"Host {host!r} is not this server's name: it answers requests addressed to "
            f"{served} or an IP address, so that no web page can reach it through a DNS name "
            "it controls (DNS rebinding). Use http://localhost:<port>, or start the server "
            "with --host <that name>"
        )
    if origins and not _same_origin(origins[0], host, scheme):
        return (
            f"cross-origin request refused: a page from {origins[0]} may not use this "
            "server (its API is for Tinybird's clients, which send no Origin, and for its own "
            "pages)"
        )
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site.strip().lower() not in _ALLOWED_SITES:
        return (
            f"cross-site request refused (Sec-Fetch-Site: {site}): pages from other sites may "
            "not use this server"
        )
    return None


def from_browser(headers: Message) -> bool:
    """Whether a browser sent the request (it says so in ``Origin`` or ``Sec-Fetch-*``)."""
    names = [name.lower() for name in headers]
    return any(name == "origin" or name.startswith("sec-fetch-") for name in names)


def _same_origin(origin: str, host: str | None, scheme: str) -> bool:
    if host is None:
        return False
    default = 443 if scheme == "https" else 80
    try:
        page = urllib.parse.urlsplit(origin)
        server = urllib.parse.urlsplit(f"{scheme}://{host}")
        return (
            page.scheme.lower() == scheme
            and bool(page.hostname)
            and page.hostname == server.hostname
            and (page.port or default) == (server.port or default)
            and page.path in ("", "/")
        )
    except ValueError:
        return False
