"""What the test server exchanges with a client: the answer a test scripts (``Reply``) and
the request it records (``ReceivedRequest``).

Plain values, apart from the server (``testing``) and the raw writer of its hostile answers
(``_hostile``), which both read a ``Reply``; ``tinybird_export.testing`` exports them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import orjson


@dataclasses.dataclass(frozen=True)
class Reply:
    """How the server answers one request.

    The hostile ones (``body_size``, ``endless``, ``content_length``, ``trickle``,
    ``trickle_body``) keep writing until the client goes away or the server stops, then
    close the connection.

    Attributes:
        status: HTTP status; 200/202 answer with a Tinybird success body.
        headers: Extra response headers, sent as spelled (``retry-after: nan`` too).
        body: Response body; by default Tinybird's JSON for the status.
        delay: Seconds to wait before answering.
        hang: Accept the request and never answer (until ``release()`` or ``stop()``).
        reset: Close the connection with a TCP reset instead of answering.
        quarantine: For 200/202, how many of the rows to report as quarantined.
        body_size: Answer with a body of this many bytes instead (a huge one).
        endless: Answer with a chunked body that never ends.
        content_length: Announce this ``Content-Length``, whatever is sent (a lie).
        trickle: Seconds between the bytes of the status line and headers (slowloris).
        trickle_body: Seconds between the bytes of the body.
        echo_headers: The body quotes the request's headers (as some proxies' errors do).
    """

    status: int = 202
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    body: bytes | None = None
    delay: float = 0.0
    hang: bool = False
    reset: bool = False
    quarantine: int = 0
    body_size: int = 0
    endless: bool = False
    content_length: int | None = None
    trickle: float = 0.0
    trickle_body: float = 0.0
    echo_headers: bool = False

    @property
    def hostile(self) -> bool:
        """Whether it needs the raw writer (``_hostile_answer``)."""
        return bool(
            self.body_size
            or self.endless
            or self.content_length is not None
            or self.trickle
            or self.trickle_body
        )


@dataclasses.dataclass(frozen=True)
class ReceivedRequest:
    """One request as the server saw it (the body decompressed)."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    raw_body: bytes
    body: bytes
    status: int
    received_at: float = 0.0
    """``time.monotonic()`` when the request arrived."""

    @property
    def datasource(self) -> str:
        """The ``name`` query parameter."""
        return self.query.get("name", "")

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The NDJSON rows of the body, parsed."""
        return [orjson.loads(line) for line in self.body.splitlines() if line.strip()]
