"""Reading and decoding an Events API request body, shared by the test server and the local
server: the size is checked before a byte is read, and gzip is inflated in bounded pieces.
"""

from __future__ import annotations

import io
import socket
import time
import zlib
from email.message import Message
from typing import Any

import orjson

DISCARD_BYTES = 64 * 1024 * 1024
DISCARD_SECONDS = 2.0
_PIECE = 64 * 1024
_MEMBERS = 64  # concatenated gzip streams: a few are legitimate, thousands are an attack


class BodyError(ValueError):
    """A body the Events API refuses, with the status it answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def declared_length(headers: Message, max_bytes: int) -> int:
    """The body's ``Content-Length``, checked against ``max_bytes`` before it is read.

    Raises:
        BodyError: 411 for a chunked body (Tinybird wants a length), 400 for a length that
            is not one, 413 over ``max_bytes``.
    """
    if headers.get("Transfer-Encoding"):
        raise BodyError(411, "send the body with a Content-Length (Transfer-Encoding refused)")
    lengths = headers.get_all("Content-Length") or []
    if not lengths:
        return 0
    try:
        length = int(lengths[0])
    except ValueError:
        length = -1
    if length < 0 or len(set(lengths)) > 1:
        raise BodyError(400, f"invalid Content-Length: {', '.join(lengths)!r}")
    if length > max_bytes:
        raise BodyError(413, f"request body too large: {length} bytes, over {max_bytes}")
    return length


def discard(rfile: io.BufferedIOBase, connection: socket.socket, length: int) -> None:
    """Read and drop what the client still sends of a refused body (up to ``DISCARD_BYTES``
    for ``DISCARD_SECONDS``, in 64 KiB pieces), so that it reads the early answer instead of
    a connection reset; the caller then closes the connection.
    """
    deadline = time.monotonic() + DISCARD_SECONDS
    left = min(length, DISCARD_BYTES)
    try:
        while left > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            connection.settimeout(remaining)
            piece = rfile.read1(min(left, _PIECE))
            if not piece:
                return
            left -= len(piece)
    except OSError:  # the client went away, or the time is up
        return


def decode(raw: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """The body, gunzipped when sent with ``Content-Encoding: gzip``.

    Raises:
        BodyError: 413 over ``max_bytes`` (before or after decompression; a gzip bomb is
            inflated no further than ``max_bytes``), 400 bad gzip.
    """
    if len(raw) > max_bytes:
        raise BodyError(413, f"request body too large: over {max_bytes} bytes")
    if content_encoding == "gzip" and raw:
        try:
            return _gunzip(raw, max_bytes)
        except zlib.error as exc:
            raise BodyError(400, f"invalid gzip body: {exc}") from None
    return raw


def _gunzip(raw: bytes, max_bytes: int) -> bytes:
    """Every gzip member of ``raw`` (zero padding after them is ignored, as gzip does), fed
    to zlib in 64 KiB pieces and never inflated past ``max_bytes + 1`` bytes.
    """
    view = memoryview(raw)
    pieces: list[bytes] = []
    size = start = members = 0
    while start < len(raw) and not (raw[start] == 0 and raw.count(0, start) == len(raw) - start):
        members += 1
        if members > _MEMBERS:
            raise BodyError(400, f"invalid gzip body: more than {_MEMBERS} gzip members")
        member = zlib.decompressobj(wbits=31)
        while not member.eof:
            if start >= len(raw):
                raise BodyError(400, "invalid gzip body: it ends before the end of its stream")
            chunk = view[start : start + _PIECE]
            piece = member.decompress(chunk, max_bytes + 1 - size)
            start += len(chunk) - len(member.unconsumed_tail) - len(member.unused_data)
            size += len(piece)
            if size > max_bytes:
                raise BodyError(
                    413, f"request body too large: over {max_bytes} bytes once decompressed"
                )
            pieces.append(piece)
    return b"".join(pieces)


def parse_rows(body: bytes) -> list[dict[str, Any]]:
    """The JSON objects of an NDJSON body (blank lines skipped).

    Raises:
        BodyError: 400 naming the first malformed line (1-based).
    """
    # One parse of the whole body is several times faster than one per line; the line loop
    # below only runs to name the line at fault (or for exotic line separators).
    lines = [line for line in body.split(b"\n") if line.strip()]
    try:
        rows = orjson.loads(b"[" + b",".join(lines) + b"]")
    except orjson.JSONDecodeError:
        rows = None
    # Same count: a line like {"a":1},{"b":2} must not pass as two rows.
    if rows is not None and len(rows) == len(lines) and all(type(r) is dict for r in rows):
        return rows  # type: ignore[no-any-return]
    rows = []
    for number, line in enumerate(body.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise BodyError(400, f"malformed JSON on line {number}: {exc}") from None
        if not isinstance(row, dict):
            raise BodyError(400, f"line {number} is not a JSON object")
        rows.append(row)
    return rows


def count_rows(body: bytes) -> int:
    """Rows of an NDJSON body without parsing them (benchmark servers)."""
    return sum(1 for line in body.splitlines() if line.strip())
