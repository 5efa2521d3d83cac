"""The storage interface behind the local server, and what both engines share.

An engine keeps data sources (a table each, plus ``<name>_quarantine`` for rows that do not
fit), answers read-only SQL, and keeps the local token with the data. ``open_engine`` picks
one: ``clickhouse`` (chDB, from the ``tinybird-export[local]`` extra) or ``sqlite`` (no
dependency); ``auto`` is ClickHouse when chDB is installed.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from tinybird_export.local._datafile import DataFile
from tinybird_export.local._schema import CheckError, Column, json_text

if TYPE_CHECKING:
    from tinybird_export.local._limits import Cancel

INSTALL_CLICKHOUSE = "pip install -e '.[local]' in a clone of tinybird-export, or pip install chdb"
"""How to get the ClickHouse engine (the package is not on the index yet: no ``[local]`` by
name), for every message that suggests it."""
VALID_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
QUARANTINE_SUFFIX = "_quarantine"
"""Data source names, as Tinybird accepts them; anything else is refused before SQL."""
GUESS_SAMPLE = 1000
ENGINES = ("auto", "sqlite", "clickhouse")
QUARANTINE_EXTRA = ("c__error_column", "c__error", "c__import_id", "insertion_date", "row")
# The trailing FORMAT clause, found from its word: a search for "\s+FORMAT..." backtracked
# through every run of spaces, for minutes (holding the GIL) on a query of a few 100 KB.
_FORMAT_WORD = re.compile(r"(?<=\s)FORMAT\b", re.IGNORECASE)
_FORMAT = re.compile(r"FORMAT\s+(\w+)\s*;?\s*", re.IGNORECASE)
CONTENT_TYPES = {
    # What Tinybird's /v0/sql answers for each FORMAT. The CLIs read a response as text only
    # when its Content-Type has text/csv or ndjson or is exactly text/plain (TSV), else JSON.
    "JSON": "application/json",
    "JSONCompact": "application/json",
    "JSONStrings": "application/json",
    "CSV": "text/csv",
    "CSVWithNames": "text/csv",
    "TSV": "text/plain",
    "TSVWithNames": "text/plain",
    "TabSeparated": "text/plain",
    "TabSeparatedWithNames": "text/plain",
    "JSONEachRow": "application/x-ndjson",
    "JSONCompactEachRow": "application/x-ndjson",
    "Parquet": "application/octet-stream",
    "Arrow": "application/octet-stream",
    "ArrowStream": "application/octet-stream",
    "PrettyCompact": "text/plain",
    "Pretty": "text/plain",
    "Markdown": "text/plain",
}


class UnknownDataSource(KeyError):
    """The data source does not exist and may not be created (strict mode)."""


class QueryError(ValueError):
    """A query that is invalid; ``status`` is the HTTP status to answer."""

    status = 400


class ReadOnlyError(QueryError):
    """A query that would write: ``/v0/sql`` never does."""

    status = 403


class InvalidName(ValueError):
    """A data source name that is not a plain identifier."""


class EngineUnavailable(RuntimeError):
    """``--engine clickhouse`` without chDB installed."""


@dataclasses.dataclass
class DataSourceInfo:
    """A data source as the Data Sources API lists it."""

    datafile: DataFile
    created_at: str
    updated_at: str
    row_count: int = 0
    bytes: int = 0
    quarantine_rows: int = 0

    @property
    def name(self) -> str:
        """The data source's name."""
        return self.datafile.name

    @property
    def columns(self) -> list[Column]:
        """Its columns."""
        return self.datafile.columns


@dataclasses.dataclass(frozen=True)
class QueryResult:
    """A ``/v0/sql`` answer: the body, its Content-Type and how many rows it holds (None
    when the format does not say cheaply).
    """

    body: bytes
    content_type: str
    rows: int | None = None


class Engine(Protocol):
    """What the local server needs from its storage."""

    name: str
    token: str

    def declare(self, datafile: DataFile, *, replace: bool = False) -> bool:
        """Create a data source (kept when it exists, unless ``replace``); True if created."""

    def ingest(
        self, name: str, rows: list[dict[str, Any]], *, create: bool, wait: bool = True
    ) -> tuple[int, int]:
        """Insert ``rows``; ``(successful_rows, quarantined_rows)``. Without ``wait`` the
        insert may be deferred (never past the next read).
        """

    def query(self, sql: str, cancel: Cancel | None = None) -> QueryResult:
        """Run one read-only query, interrupted when ``cancel`` fires."""

    def datasources(self) -> list[DataSourceInfo]:
        """Every data source (not the quarantine tables)."""

    def truncate(self, name: str) -> None:
        """Delete every row of ``name`` (and of its quarantine)."""

    def drop(self, name: str) -> None:
        """Remove ``name`` and its quarantine."""

    def delete_rows(
        self, name: str, condition: str, *, dry_run: bool = False, cancel: Cancel | None = None
    ) -> int:
        """Delete the rows of ``name`` where ``condition`` holds; how many matched."""

    def close(self) -> None:
        """Release the database."""


def clickhouse_available() -> bool:
    """Whether chDB (the ``tinybird-export[local]`` extra) is installed."""
    return importlib.util.find_spec("chdb") is not None


def resolve_engine(kind: str) -> str:
    """``auto`` → ``clickhouse`` when chDB is installed, else ``sqlite``.

    Raises:
        EngineUnavailable: ``clickhouse`` was asked for and chDB is not installed.
    """
    if kind not in ENGINES:
        raise ValueError(f"unknown engine {kind!r}: use one of {', '.join(ENGINES)}")
    if kind == "auto":
        return "clickhouse" if clickhouse_available() else "sqlite"
    if kind == "clickhouse" and not clickhouse_available():
        raise EngineUnavailable(
            f"--engine clickhouse needs chDB: {INSTALL_CLICKHOUSE} (or use --engine sqlite)"
        )
    return kind


def open_engine(kind: str, data: str) -> Engine:
    """The engine ``kind`` (``auto``, ``sqlite``, ``clickhouse``) on ``data``."""
    if resolve_engine(kind) == "clickhouse":
        from tinybird_export.local._clickhouse import ClickHouseEngine  # noqa: PLC0415

        return ClickHouseEngine(data)
    from tinybird_export.local._store import Store  # noqa: PLC0415

    return Store(data)


def split_format(sql: str, default: str = "JSON") -> tuple[str, str]:
    """``(query without its trailing FORMAT clause, format name)``.

    Raises:
        QueryError: A FORMAT that Tinybird's /v0/sql does not offer.
    """
    text = sql.strip().rstrip(";").strip()
    starts = [word.start() for word in _FORMAT_WORD.finditer(text)]
    # The last word, or the one before (FORMAT FORMAT: a format named FORMAT).
    found = (_FORMAT.fullmatch(text, start) for start in reversed(starts[-2:]))
    match = next((m for m in found if m is not None), None)
    if match is None:
        return text, default
    name = next((f for f in CONTENT_TYPES if f.lower() == match.group(1).lower()), None)
    if name is None:
        raise QueryError(
            f"FORMAT {match.group(1)} is not supported; use one of {', '.join(CONTENT_TYPES)}"
        )
    return text[: match.start()].rstrip(), name


def check_name(name: str) -> None:
    """Refuse a data source name that is not a plain identifier (it becomes SQL)."""
    if not VALID_NAME.match(name):
        raise InvalidName(f"invalid data source name {name!r}")
    if name.endswith(QUARANTINE_SUFFIX):  # each data source's quarantine table is its name
        raise InvalidName(
            f"invalid data source name {name!r}: it names the quarantine of "
            f"{name.removesuffix(QUARANTINE_SUFFIX)!r}"
        )


def now_text() -> str:
    """UTC now as ``YYYY-MM-DD HH:MM:SS.ffffff`` (the Data Sources API's form)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


class RowError(CheckError):
    """A row that does not fit: the column and why."""

    def __init__(self, column: str, message: str) -> None:
        super().__init__(f"column {column!r}: {message}")
        self.column = column


MISSING = object()


def lookup(column: Column, row: Mapping[str, Any]) -> Any:
    """The value at the column's JSONPath, or ``MISSING``."""
    path = column.path
    if len(path) == 1:
        return row.get(path[0], MISSING)
    value: Any = row
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return MISSING
        value = value[key]
    return value


def quarantine_row(
    columns: list[Column], row: Mapping[str, Any], error: RowError, now: str
) -> dict[str, Any]:
    """The ``<name>_quarantine`` row for ``row``: each column's raw value as text, and why.

    Tinybird's quarantine tables have the data source's columns as ``Nullable(String)`` plus
    ``c__error_column``, ``c__error``, ``c__import_id`` and ``insertion_date``
    (https://www.tinybird.co/docs/forward/get-data-in/quarantine); ``row`` keeps the whole
    line as sent.
    """
    record: dict[str, Any] = {}
    for column in columns:
        if column.name in QUARANTINE_EXTRA:
            continue
        value = lookup(column, row)
        if value is MISSING or value is None:
            record[column.name] = None
        else:
            record[column.name] = value if isinstance(value, str) else json_text(value)
    record.update(
        c__error_column=[error.column],
        c__error=[str(error)],
        c__import_id=None,
        insertion_date=now[:19],
        row=json_text(row),
    )
    return record
