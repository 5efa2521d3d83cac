"""Flask integration: request context in every log event, optional access events.

``tinybird_export.flask.init_app(app)`` after creating the app (configure logging with
``dictConfig`` before ``Flask(__name__)``, as Flask's docs say). Options are arguments, else
the app's config keys, else environment variables, all named ``TINYBIRD_REQUEST_ID_HEADER``,
``TINYBIRD_ACCESS_EVENTS`` and ``TINYBIRD_HREF_QUERY`` (see ``tinybird_export.django``).
"""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask, g, request

from tinybird_export._context import (
    RequestContext,
    current_request,
    env_flag,
    log_access,
    request_id,
    strip_access_lines,
)

__all__ = ["init_app"]


def init_app(
    app: Flask,
    *,
    request_id_header: str | None = None,
    access_events: bool | None = None,
    keep_query_string: bool | None = None,
) -> None:
    """Fill ``href`` and ``request_id`` from ``flask.request`` on every log event.

    Args:
        app: The Flask application.
        request_id_header: Trust this incoming header for the request id.
        access_events: Also log one access event per request.
        keep_query_string: Keep the query string in ``href``.
    """
    header = (
        request_id_header
        or app.config.get("TINYBIRD_REQUEST_ID_HEADER")
        or os.environ.get("TINYBIRD_REQUEST_ID_HEADER")
    )
    access = env_flag(
        "ACCESS_EVENTS",
        access_events if access_events is not None else app.config.get("TINYBIRD_ACCESS_EVENTS"),
    )
    keep_query = env_flag(
        "HREF_QUERY",
        keep_query_string
        if keep_query_string is not None
        else app.config.get("TINYBIRD_HREF_QUERY"),
    )

    if not keep_query:
        strip_access_lines("werkzeug")  # the development server's own request lines

    @app.before_request
    def _enter() -> None:
        href = request.url if keep_query else request.base_url
        incoming = request.headers.get(header) if header else None
        context = RequestContext(href, request_id(incoming))
        g._tinybird_token = current_request.set(context)
        g._tinybird_started = time.perf_counter()

    def _log_access(status: int) -> None:
        g._tinybird_logged = True
        rule = request.url_rule.rule if request.url_rule else ""
        log_access(request.method, rule, status, g._tinybird_started, request.base_url)

    @app.after_request
    def _access(response: Any) -> Any:
        if access:
            _log_access(response.status_code)
        return response

    @app.teardown_request
    def _leave(exc: BaseException | None) -> None:
        if access and "_tinybird_started" in g and "_tinybird_logged" not in g:
            _log_access(500)  # the request ended without a response (after_request skipped)
        token = g.pop("_tinybird_token", None)
        if token is not None:
            current_request.reset(token)
