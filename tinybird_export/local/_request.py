"""Requests and answers of the local server's HTTP API, and the bodies clients upload.

Form bodies are read with the standard library (``urllib.parse`` for urlencoded forms,
``email`` for ``multipart/form-data``, as Tinybird's CLIs and SDKs send files); CSV with
``csv``.
"""

from __future__ import annotations

import csv
import dataclasses
import email.policy
import io
import urllib.parse
from email.message import Message
from email.parser import BytesParser
from typing import Any

import orjson

from tinybird_export._ingest_body import BodyError
from tinybird_export.local._limits import Cancel
from tinybird_export.local._schema import Column


@dataclasses.dataclass(frozen=True)
class Part:
    """One part of a multipart body."""

    name: str
    filename: str | None
    content: bytes


@dataclasses.dataclass
class Request:
    """An HTTP request to the local server."""

    method: str
    path: str
    query: dict[str, str]
    headers: Message
    body: bytes
    cancel: Cancel = dataclasses.field(default_factory=Cancel)
    """Fires when the client goes away (set for the routes that run queries)."""

    @property
    def content_type(self) -> str:
        """The request's Content-Type (empty when absent)."""
        return self.headers.get("Content-Type") or ""

    def form(self) -> dict[str, str]:
        """Query parameters, then urlencoded or multipart text fields, merged."""
        fields = dict(self.query)
        if "form-urlencoded" in self.content_type:
            fields.update(urllib.parse.parse_qsl(self.body.decode("utf-8", "replace")))
        elif "multipart/form-data" in self.content_type:
            for part in self.parts():
                if part.filename is None:
                    fields[part.name] = part.content.decode("utf-8", "replace")
        return fields

    def parts(self) -> list[Part]:
        """The parts of a ``multipart/form-data`` body (none for other bodies)."""
        if "multipart/form-data" not in self.content_type:
            return []
        head = f"Content-Type: {self.content_type}\r\n\r\n".encode()
        message = BytesParser(policy=email.policy.HTTP).parsebytes(head + self.body)
        parts = []
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition") or ""
            payload = part.get_payload(decode=True)
            content = payload if isinstance(payload, bytes) else b""
            parts.append(Part(str(name), part.get_filename(), content))
        return parts


@dataclasses.dataclass
class Response:
    """An answer: status, body and Content-Type, the headers of its own, and the rows it
    wrote or returned (for the request log).
    """

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    rows: int | None = None
    quarantined: int = 0

    @classmethod
    def json(cls, status: int, payload: Any) -> Response:
        """A JSON answer."""
        return cls(status, orjson.dumps(payload))

    @classmethod
    def error(cls, status: int, message: str) -> Response:
        """Tinybird's error shape, ``{"error": ...}``."""
        return cls.json(status, {"error": message})


def csv_rows(columns: list[Column], text: str) -> list[dict[str, Any]]:
    """CSV lines as rows for ``columns`` (by position; a header row naming them is skipped).

    Values become what the columns' checks take: empty cells are null, arrays and maps are
    read as JSON, booleans from ``true``/``false``/``1``/``0``.

    Raises:
        BodyError: 400, CSV the ``csv`` module cannot read (naming the line).
    """
    names = [c.name for c in columns]
    reader = csv.reader(io.StringIO(text))
    rows = []
    try:
        for number, cells in enumerate(reader):
            if not cells or (number == 0 and [c.strip() for c in cells] == names):
                continue
            row: dict[str, Any] = {}
            for column, cell in zip(columns, cells, strict=False):
                _put(row, column.path, _cell(column, cell))
            rows.append(row)
    except csv.Error as exc:  # a field over 128 KiB, a quote left open at the end
        raise BodyError(400, f"CSV line {reader.line_num}: {exc}") from None
    return rows


def _cell(column: Column, cell: str) -> Any:
    base = column.type.name.removeprefix("Nullable(").removeprefix("LowCardinality(")
    if cell == "" and column.type.nullable:
        return None
    if base.startswith(("Array", "Map")):
        try:
            return orjson.loads(cell.replace("'", '"'))
        except orjson.JSONDecodeError:
            return cell
    if base.startswith("Bool"):
        return {"true": True, "false": False, "1": True, "0": False}.get(cell.lower(), cell)
    return cell


def _put(row: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        row = row.setdefault(key, {})
    row[path[-1]] = value
