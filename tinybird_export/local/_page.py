"""The local server's page at ``/``: its static files (``page/``), public, and the headers
that keep it to itself.

The files hold no data. The page reads the workspace through the same API as Tinybird's
clients (``/v0/datasources``, ``/v0/sql``), with the token from its URL's fragment
(``/#token=...``), which a browser never sends: it goes in an ``Authorization`` header, never
in a URL, a log line or the server's memory. Its requests are same-origin, so they pass the
Host, Origin and Sec-Fetch-Site checks (``_http_guard``) that refuse every other page.

Its headers: a Content-Security-Policy that runs only the page's own script and styles
(no inline script, no ``eval``), lets it fetch only this server, and no page frame it
(clickjacking); no Referer; and its files are not for other origins to embed.
"""

from __future__ import annotations

import importlib.resources

from tinybird_export.local._request import Response

_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/chart.js": ("chart.js", "text/javascript; charset=utf-8"),
    "/dom.js": ("dom.js", "text/javascript; charset=utf-8"),
    "/waterfall.js": ("waterfall.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
PATHS = frozenset(_FILES)
"""The page's paths: answered without the token (they hold no data)."""
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Frame-Options", "DENY"),  # frame-ancestors, for browsers that predate it
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)


def answer(path: str) -> Response:
    """The page's file at ``path`` (one of ``PATHS``), with the page's headers."""
    name, content_type = _FILES[path]
    body = importlib.resources.files("tinybird_export.local").joinpath("page", name).read_bytes()
    return Response(200, body, content_type, headers=_HEADERS)
