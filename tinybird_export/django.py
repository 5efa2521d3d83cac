"""Django integration: request context in every log event, optional access events.

Add ``"tinybird_export.django.RequestContextMiddleware"`` to ``MIDDLEWARE`` (near the top).
Settings (Django settings, else the environment variable of the same name):

- ``TINYBIRD_REQUEST_ID_HEADER``: trust this incoming header (e.g. ``"X-Request-ID"``) for
  the request id; unset, every request gets a new random id.
- ``TINYBIRD_ACCESS_EVENTS``: also log one access event per request (method, route,
  status, duration_ms) through the ``tinybird_export.access`` logger.
- ``TINYBIRD_HREF_QUERY``: keep the query string in ``href`` (off by default: query strings
  carry reset tokens and OAuth codes).

Works for sync and async views, WSGI and ASGI: the context lives in a context variable.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings

from tinybird_export._context import (
    RequestContext,
    current_request,
    env_flag,
    log_access,
    request_id,
    strip_access_lines,
)

__all__ = ["RequestContextMiddleware"]


def _setting(name: str) -> Any:
    return getattr(settings, f"TINYBIRD_{name}", None)


class RequestContextMiddleware:
    """Puts ``href`` and ``request_id`` of the current request on every log event."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
        header = _setting("REQUEST_ID_HEADER") or os.environ.get("TINYBIRD_REQUEST_ID_HEADER")
        self.header = "HTTP_" + header.upper().replace("-", "_") if header else None
        self.access = env_flag("ACCESS_EVENTS", _setting("ACCESS_EVENTS"))
        self.keep_query = env_flag("HREF_QUERY", _setting("HREF_QUERY"))
        if not self.keep_query:
            strip_access_lines("django.server")  # runserver's own request lines

    def __call__(self, request: Any) -> Any:
        """Serve ``request`` with its context set (a coroutine under ASGI)."""
        if self.async_mode:
            return self.__acall__(request)
        context = self._context(request)
        token = current_request.set(context)
        started = time.perf_counter()
        status = 500
        try:
            response = self.get_response(request)
            status = response.status_code
            return response
        finally:
            if self.access:
                log_access(request.method, _route(request), status, started, context.href)
            current_request.reset(token)

    async def __acall__(self, request: Any) -> Any:
        context = self._context(request)
        token = current_request.set(context)
        started = time.perf_counter()
        status = 500
        try:
            response = await self.get_response(request)
            status = response.status_code
            return response
        finally:
            if self.access:
                log_access(request.method, _route(request), status, started, context.href)
            current_request.reset(token)

    def _context(self, request: Any) -> RequestContext:
        incoming = request.META.get(self.header) if self.header else None
        return RequestContext(_href(request, self.keep_query), request_id(incoming))


def _href(request: Any, keep_query: bool) -> str:
    """The absolute URL, never raising: ``get_host()`` raises DisallowedHost for hosts
    outside ALLOWED_HOSTS, so fall back to the server's own name. No credentials (Django
    never puts userinfo in the host) and, by default, no query string.
    """
    try:
        host = request.get_host()
    except Exception:  # noqa: BLE001 - DisallowedHost, or anything odd in the headers
        host = request.META.get("SERVER_NAME", "")
        port = request.META.get("SERVER_PORT", "")
        if port and port not in ("80", "443"):
            host = f"{host}:{port}"
    path = request.get_full_path() if keep_query else request.path
    return f"{request.scheme}://{host}{path}"


def _route(request: Any) -> str:
    match = getattr(request, "resolver_match", None)
    return str(getattr(match, "route", "") or "")
