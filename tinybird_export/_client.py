"""One HTTP attempt against ``POST /v0/events``: urllib3, one pool, no retries of its own.

The client makes exactly one request and describes the answer as a value (``Attempt``);
``_retry`` decides what the answer means and the worker acts on it.
"""

from __future__ import annotations

import dataclasses

# Imported here, on the importing thread, rather than lazily by the first request on a
# sender thread: a fork() while that thread holds the module's import lock would leave the
# child's lock held forever (the child's next hostname lookup or TLS handshake hangs).
import encodings.idna  # noqa: F401 - hostnames are IDNA-encoded by getaddrinfo and ssl
import http.client
import socket
import ssl
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Mapping
from importlib import metadata
from typing import Any, Final

import orjson
import urllib3
import urllib3.util.ssl_

from tinybird_export import _deadline
from tinybird_export._runtime_settings import RuntimeSettings

try:
    _VERSION = metadata.version("tinybird-export")
except metadata.PackageNotFoundError:  # Defensive: running from a source tree
    _VERSION = "0"
_USER_AGENT: Final = f"tinybird-export/{_VERSION}"
_MAX_ERROR_TEXT: Final = 500
# The Events API answers with a few hundred bytes; anything past this is not read.
_MAX_RESPONSE: Final = 64 * 1024
TRANSPORT_ERRORS: Final = (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)
"""What a request can fail with on the network: refused, reset, timed out, TLS, protocol."""


@dataclasses.dataclass(frozen=True)
class Attempt:
    """The result of one POST: a status, or ``None`` with ``error`` for a transport failure."""

    status: int | None
    headers: Mapping[str, str]
    successful_rows: int | None = None
    quarantined_rows: int = 0
    error: str = ""
    wire_bytes: int = 0
    kind: str = ""
    """For a transport failure: ``dns``, ``refused``, ``tls``, ``timeout`` or ``connection``
    (``_retry.failure_hint`` says what each means)."""
    unanswered: bool = False
    """For a transport failure: the request was sent whole and the answer did not come (a
    read timeout, a reset while reading): the server may have stored it."""


class EventsClient:
    """Posts NDJSON batches to ``{host}/v0/events`` through one keep-alive pool.

    The token goes only in the ``Authorization`` header: never in the URL, a repr or an
    error message (URLs end up in proxy and server logs).

    The TLS context of an https host is built here, on the constructing thread, once
    (``tls_context``), never by a request on a sender thread: OpenSSL holds a global lock
    while it builds a context, and a ``fork()`` then would leave the child's lock held
    forever (58 of 150 children forked during a first request hung in
    ``SSLContext.__new__``). A forked child's client reuses the parent's context
    (``context=``): it never builds one.

    Args:
        host: The API host.
        token: The token.
        compression: ``gzip`` or ``none``.
        ca_bundle: CA certificates to trust instead of the system's.
        connect_timeout: Default connect timeout.
        context: The TLS context to use (a forked child's: its parent's); default one
            built here for an https host.
    """

    def __init__(
        self,
        host: str,
        token: str,
        *,
        compression: str = "gzip",
        ca_bundle: str | None = None,
        connect_timeout: float = 3.0,
        context: ssl.SSLContext | None = None,
    ) -> None:
        self._base = host.rstrip("/") + "/v0/events"
        self._token = token
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/x-ndjson",
            "User-Agent": _USER_AGENT,
        }
        self._gzip = compression == "gzip"
        if self._gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._connect_timeout = connect_timeout
        self._host, self._ca_bundle = host, ca_bundle
        if context is None and urllib.parse.urlsplit(host).scheme == "https":
            context = tls_context(ca_bundle)
        self.tls_context = context
        self._pool = _pool_for(host, ca_bundle, context)

    @classmethod
    def of(cls, settings: RuntimeSettings, context: ssl.SSLContext | None = None) -> EventsClient:
        """The client of a worker's runtime settings (``context``: a forked child's, its
        parent's).
        """
        return cls(
            settings.host,
            settings.token,
            compression=settings.compression,
            ca_bundle=settings.ca_bundle,
            connect_timeout=settings.connect_timeout,
            context=context,
        )

    def __repr__(self) -> str:
        return f"<EventsClient {self._base}>"

    def post(
        self,
        datasource: str,
        ndjson: bytes | bytearray,
        *,
        wait: bool,
        read_timeout: float,
        deadline: float | None = None,
        gzipped: bytes | None = None,
        connect_timeout: float | None = None,
    ) -> Attempt:
        """Send ``ndjson`` (lines ending in newlines) as one request.

        The attempt ends by ``deadline`` (``time.monotonic()``; default: connect timeout
        plus ``read_timeout`` from now), however slowly the server sends, and reads at most
        ``_MAX_RESPONSE`` bytes of the answer (the rest is discarded with the connection).
        Network, TLS and protocol failures are answers (``status=None``); anything else is
        a bug, raised for the worker to report (retrying a bug would block the data source
        for good). ``gzipped``: the body, already compressed (a spool file), sent as is.
        ``connect_timeout``: default the one given at construction.
        """
        now = time.monotonic()
        if connect_timeout is None:
            connect_timeout = self._connect_timeout
        if deadline is None:
            deadline = now + connect_timeout + read_timeout
        remaining = max(deadline - now, 0.05)
        # Level 1: most of gzip's ratio on NDJSON for a fraction of the CPU; zlib releases
        # the GIL while compressing, so application threads keep running.
        if gzipped is not None:
            body = gzipped if self._gzip else zlib.decompress(gzipped, 31)
        else:
            body = _gzip(ndjson) if self._gzip else bytes(ndjson)
        query = {"name": datasource, **({"wait": "true"} if wait else {})}
        url = f"{self._base}?{urllib.parse.urlencode(query)}"
        timeout = urllib3.Timeout(
            connect=min(connect_timeout, remaining), read=min(read_timeout, remaining)
        )
        if self.tls_context is not None and type(self.tls_context) is not ssl.SSLContext:
            self._after_ssl_patched()
        try:
            with _deadline.attempt(deadline):
                response = self._pool.request(
                    "POST",
                    url,
                    body=body,
                    headers=self._headers,
                    timeout=timeout,
                    retries=False,
                    redirect=False,
                    preload_content=False,
                    decode_content=False,
                )
                data = _read_bounded(response)
        except TRANSPORT_ERRORS as exc:
            kind = failure_kind(exc)
            if kind == "timeout" and time.monotonic() >= deadline - 0.05:
                error = f"no complete answer within the attempt's deadline ({deadline - now:.1f} s)"
            else:
                error = self._quoted(_describe(exc))
            unanswered = _deadline.answer_awaited()
            return Attempt(
                None, {}, error=error, wire_bytes=len(body), kind=kind, unanswered=unanswered
            )
        headers = {name.lower(): value for name, value in response.headers.items()}
        if response.status in (200, 202):
            successful, quarantined = _rows(data)
            return Attempt(response.status, headers, successful, quarantined, wire_bytes=len(body))
        error = self._quoted(_error_text(data))
        return Attempt(response.status, headers, error=error, wire_bytes=len(body))

    def redact(self, text: str) -> str:
        """``text`` with the token replaced (a server or proxy may quote our headers).

        Tokens shorter than 8 characters are test tokens, not secrets: replacing them
        would garble the text.
        """
        if len(self._token) < 8:
            return text
        text = text.replace(self._token, "<token>")
        # A token cut short at the text's end (the server's own cut, or our read bound)
        # is still secret: no prefix of it may stay either.
        for length in range(len(self._token) - 1, 7, -1):
            if text.endswith(self._token[:length]):
                return text[:-length] + "<token>"
        return text

    def _quoted(self, text: str) -> str:
        """``text`` redacted, then cut to its shown length: cut first, a token across the
        cut would have left its prefix unmatched.
        """
        return self.redact(text)[:_MAX_ERROR_TEXT]

    def close(self) -> None:
        """Close the pool's connections."""
        self._pool.clear()

    def _after_ssl_patched(self) -> None:
        """``ssl`` was patched after the context was built (gevent's ``patch_all()`` in a
        gunicorn worker forked from a ``--preload`` master): a context of the old class
        would block the event loop, so urllib3 builds them per connection, as without
        one (``_delivery.report_internal_error`` says what to do if that fails).
        """
        self._pool.clear()
        self.tls_context = None
        self._pool = _pool_for(self._host, self._ca_bundle, None)


def _gzip(data: bytes | bytearray) -> bytes:
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: gzip container
    return compressor.compress(data) + compressor.flush()


def _read_bounded(response: urllib3.BaseHTTPResponse) -> bytes:
    """At most ``_MAX_RESPONSE`` bytes of the body, as sent (not decompressed: a small
    compressed answer could expand without bound). A longer body is not read: its
    connection is closed rather than returned to the pool.
    """
    try:
        data = response.read(_MAX_RESPONSE + 1, decode_content=False)
    except BaseException:
        response.close()
        raise
    if len(data) > _MAX_RESPONSE:
        response.close()
        return data[:_MAX_RESPONSE]
    response.release_conn()
    return data


def _rows(data: bytes) -> tuple[int | None, int]:
    """``successful_rows`` / ``quarantined_rows`` from a 200/202 body, parsed defensively."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None, 0
    if not isinstance(body, dict):
        return None, 0
    successful = body.get("successful_rows")
    quarantined = body.get("quarantined_rows")
    return (
        successful if isinstance(successful, int) else None,
        quarantined if isinstance(quarantined, int) else 0,
    )


def _error_text(data: bytes) -> str:
    """The server's own words: ``error`` from a JSON body, else the text (proxies answer HTML)."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return data.decode("utf-8", "replace").strip()


def failure_kind(exc: BaseException) -> str:
    """What kind of transport failure ``exc`` is, for the message that says what to fix."""
    chain = [exc]
    while chain[-1].__cause__ or chain[-1].__context__:  # urllib3 wraps the socket's error
        chain.append(chain[-1].__cause__ or chain[-1].__context__)  # type: ignore[arg-type]
        if len(chain) > 8:
            break
    if any(isinstance(e, urllib3.exceptions.NameResolutionError | socket.gaierror) for e in chain):
        return "dns"
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "refused"
    if any(isinstance(e, urllib3.exceptions.SSLError | ssl.SSLError) for e in chain):
        return "tls"
    if isinstance(exc, urllib3.exceptions.NewConnectionError):  # unreachable, not timed out
        return "connection"
    if any(isinstance(e, TimeoutError | urllib3.exceptions.TimeoutError) for e in chain):
        return "timeout"
    return "connection"


def _describe(exc: Exception) -> str:
    reason = getattr(exc, "reason", None) or exc
    # NewConnectionError subclasses ConnectTimeoutError in urllib3 2: test it first.
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        detail = str(exc).rpartition("new connection: ")[2]
        return f"cannot connect ({detail})"
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return "read timed out"
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        return "connect timed out"
    return f"{type(reason).__name__}: {reason}"


def tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """The context urllib3 would build for each connection (its defaults: TLS 1.2 at
    least, certificates and host names verified), with ``ca_bundle``'s certificates or
    the system's loaded once rather than at every connection.

    Raises:
        ValueError: ``ca_bundle`` cannot be read as PEM certificates (said at
            construction, rather than as a TLS failure at every attempt).
    """
    context = urllib3.util.ssl_.create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
    if not ca_bundle:
        context.load_default_certs()
        return context
    try:
        context.load_verify_locations(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"tinybird-export: setting 'ca_bundle' (env TINYBIRD_CA_BUNDLE) is {ca_bundle!r}, "
            f"which cannot be loaded ({type(exc).__name__}: {exc}): point it at a file of "
            "PEM-encoded CA certificates, or unset it to trust the system's."
        ) from None
    return context


def _pool_for(
    base: str, ca_bundle: str | None, context: ssl.SSLContext | None
) -> urllib3.PoolManager:
    """A pool honouring ``HTTPS_PROXY``/``HTTP_PROXY`` and ``NO_PROXY`` like the stdlib does,
    with the TLS ``context`` if given (the CA bundle is in it: given to urllib3 too, it
    would load it again at every connection).
    """
    host = urllib.parse.urlsplit(base)
    proxy = urllib.request.getproxies().get(host.scheme)
    tls: dict[str, Any] = (
        {"ssl_context": context} if context is not None else {"ca_certs": ca_bundle}
    )
    # Up to one connection per sender thread (a worker runs up to four at once).
    manager: urllib3.PoolManager
    if proxy and not urllib.request.proxy_bypass(host.netloc):
        proxy_tls: dict[str, Any] = {"proxy_ssl_context": context} if context else {}
        manager = urllib3.ProxyManager(
            proxy, num_pools=2, maxsize=4, cert_reqs="CERT_REQUIRED", **proxy_tls, **tls
        )
    else:
        manager = urllib3.PoolManager(num_pools=2, maxsize=4, cert_reqs="CERT_REQUIRED", **tls)
    manager.pool_classes_by_scheme = _deadline.POOL_CLASSES
    return manager
