"""``.datasource`` files: Tinybird's datafile syntax, read for the local server's schemas.

The ``SCHEMA >`` block gives the columns, one a line, as
``` `name` Type `json:$.path` [DEFAULT expr] [CODEC(...)] ```; ``DESCRIPTION >`` and the
``ENGINE*`` settings are kept (the ClickHouse engine creates its tables with them, and
``GET /v0/datasources/{name}.datasource`` writes them back). Errors name the file and line.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import orjson

from tinybird_export.local._schema import Column, UnsupportedType, parse_type, path_of

# Greedy and anchored, the trailing comma cut after: a lazy rest before \s*\Z backtracked
# through every run of spaces (seconds for a 20 KB line, holding the GIL).
_COLUMN_LINE = re.compile(r"`?(?P<name>\w+)`?\s+(?P<rest>.+)")
_MAX_NESTING = 32
_SETTING = re.compile(r"(?P<key>[A-Z_]+)\s+(?P<value>.*)\Z")
ENGINE_KEYS = (
    "ENGINE_PARTITION_KEY",
    "ENGINE_SORTING_KEY",
    "ENGINE_TTL",
    "ENGINE_VER",
    "ENGINE_SIGN",
    "ENGINE_VERSION",
    "ENGINE_SETTINGS",
)


class DatafileError(ValueError):
    """A ``.datasource`` file (or schema) that cannot be read: names the file and line."""


@dataclasses.dataclass
class DataFile:
    """What a ``.datasource`` file declares."""

    name: str
    columns: list[Column]
    description: str = ""
    engine: dict[str, str] = dataclasses.field(default_factory=dict)
    source: str = ""  # the file it was read from, for error messages


def parse_datasource(
    text: str, filename: str = "<datasource>", *, lenient: bool = False
) -> list[Column]:
    """The columns of a ``.datasource`` file's ``SCHEMA >`` block.

    Lines read ``` `name` Type `json:$.path` [DEFAULT expr] ```; without a JSONPath the
    column reads ``$.name``.

    Raises:
        DatafileError: Naming ``filename``, the line and what is wrong.
    """
    return parse_datafile(text, filename, lenient=lenient).columns


def parse_datafile(text: str, filename: str, *, lenient: bool = False) -> DataFile:
    """A whole ``.datasource`` file: columns, description and engine settings.

    Args:
        text: The file's text.
        filename: Its name, for error messages (its stem is the data source's name).
        lenient: Accept column types the local checks do not know (ClickHouse engine).

    Raises:
        DatafileError: Naming ``filename``, the line and what is wrong.
    """
    lines = text.splitlines()
    result = DataFile(Path(filename).stem, [], source=filename)
    index, found_schema = 0, False
    while index < len(lines):
        line = lines[index]
        stripped = line.strip()
        index += 1
        if not stripped or stripped.startswith("#") or line[0].isspace():
            continue
        block, body = _block(lines, index)
        if stripped.startswith("SCHEMA"):
            found_schema = True
            for number, column_line in body:
                result.columns.append(_column(column_line, filename, number, lenient))
            index = body[-1][0] if body else index
        elif stripped.startswith("DESCRIPTION"):
            result.description = "\n".join(text for _, text in body)
            index = body[-1][0] if body else index
        elif block:  # INDEXES >, FORWARD_QUERY > ...: not used locally
            index = body[-1][0] if body else index
        else:
            match = _SETTING.match(stripped)
            if match and match["key"].startswith("ENGINE"):
                result.engine[match["key"]] = match["value"].strip().strip('"').strip("'")
    if not found_schema:
        raise DatafileError(f"{filename}: no SCHEMA > block (see Tinybird's datasource files)")
    if not result.columns:
        raise DatafileError(f"{filename}: the SCHEMA > block has no columns")
    return result


def _block(lines: list[str], start: int) -> tuple[bool, list[tuple[int, str]]]:
    """Whether line ``start`` (1-based) opens an indented block, and the block's lines."""
    if not lines[start - 1].rstrip().endswith(">"):
        return False, []
    body = []
    for number in range(start + 1, len(lines) + 1):
        line = lines[number - 1]
        if line.strip() and not line[0].isspace():
            break
        if line.strip():
            body.append((number, line.strip()))
    return True, body


def _column(line: str, filename: str, number: int, lenient: bool) -> Column:
    match = _COLUMN_LINE.match(line.strip())
    if match is None:
        raise DatafileError(f"{filename}:{number}: cannot read the column line {line!r}")
    name, rest = match["name"], match["rest"].rstrip()
    rest = rest.removesuffix(",")
    depth, end = 0, len(rest)
    for position, char in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth > _MAX_NESTING:  # each level is a recursion in parse_type
            raise DatafileError(
                f"{filename}:{number}: column {name!r}: a type nested over {_MAX_NESTING} deep"
            )
        if char in " `" and depth == 0:
            end = position
            break
    type_text = rest[:end]
    try:
        column_type = parse_type(type_text, lenient=lenient)
    except UnsupportedType:
        from tinybird_export.local._engine import INSTALL_CLICKHOUSE  # noqa: PLC0415 - a cycle

        raise DatafileError(
            f"{filename}:{number}: column {name!r} has type {type_text!r}, which the SQLite "
            "engine does not know (it checks String, UUID, [U]Int8-256, Float32/64, Bool, "
            "Date, DateTime, DateTime64 and Nullable, LowCardinality, Array, Map of them; the "
            f"ClickHouse engine takes every type: {INSTALL_CLICKHOUSE})"
        ) from None
    rest = rest[end:].strip()
    jsonpath = f"$.{name}"
    json_path = re.match(r"`json:(\$[^`]*)`", rest)
    if json_path:
        jsonpath = json_path.group(1)
        rest = rest[json_path.end() :].strip()
    codec = rest.find("CODEC(")
    if codec != -1 and rest.rstrip().endswith(")"):  # CODEC(...) ends the line: not used
        rest = rest[:codec].rstrip()
    default_match = re.match(r"DEFAULT\s+(.+)", rest)
    if default_match is None:
        if rest:
            raise DatafileError(f"{filename}:{number}: cannot read {rest!r} after the type")
        return Column(name, column_type, path_of(jsonpath), jsonpath=jsonpath, line=number)
    expr = default_match.group(1).strip()
    return Column(
        name, column_type, path_of(jsonpath), _literal(expr), True, expr, jsonpath, number
    )


def _literal(expr: str) -> Any:
    """A DEFAULT expression's value for the SQLite engine: quoted strings, numbers, ``[]``,
    ``map()``, ``now()`` and friends; anything else is kept as its text.
    """
    if expr.startswith("'") and expr.endswith("'"):
        return expr[1:-1]
    if expr == "[]":
        return []
    if expr in ("{}", "map()"):
        return {}
    if re.fullmatch(r"now(64)?\(.*\)", expr):
        return "now"
    try:
        return orjson.loads(expr)
    except orjson.JSONDecodeError:
        return expr


def load_datasources(source: Path, *, lenient: bool = False) -> dict[str, DataFile]:
    """Every ``*.datasource`` file under ``source`` (a directory, or one file), by name.

    Raises:
        DatafileError: ``source`` is missing or has no ``.datasource`` file, a file cannot be
            read, or the project has a ``.pipe`` file (pipes are not served locally).
    """
    if not source.exists():
        raise DatafileError(f"--datasources {source}: no such file or directory")
    paths = [source] if source.is_file() else sorted(source.glob("**/*.datasource"))
    pipes = [] if source.is_file() else sorted(source.glob("**/*.pipe"))
    if pipes:
        raise DatafileError(
            f"{pipes[0]}: pipes are not supported by tinybird-export local (only .datasource "
            "files); move the .pipe files out of this directory"
        )
    if not paths:
        raise DatafileError(f"--datasources {source}: no .datasource files there")
    return {
        path.stem: parse_datafile(path.read_text(), str(path), lenient=lenient) for path in paths
    }


def render(datafile: DataFile) -> str:
    """The ``.datasource`` text for a data source (what ``tb pull`` writes to disk)."""
    lines = []
    if datafile.description:
        lines += ["DESCRIPTION >", *(f"    {d}" for d in datafile.description.splitlines()), ""]
    lines.append("SCHEMA >")
    for index, column in enumerate(datafile.columns):
        comma = "," if index < len(datafile.columns) - 1 else ""
        lines.append(f"    {column_line(column)}{comma}")
    lines += ["", f'ENGINE "{datafile.engine.get("ENGINE", "MergeTree")}"']
    lines += [f'{key} "{datafile.engine[key]}"' for key in ENGINE_KEYS if key in datafile.engine]
    return "\n".join(lines) + "\n"


def parse_schema(schema: str, source: str, *, lenient: bool = False) -> list[Column]:
    """The columns of a Data Sources API ``schema`` (the SCHEMA lines joined by commas).

    Raises:
        DatafileError: Naming ``source`` and the column at fault.
    """
    columns = []
    for number, part in enumerate(split_columns(schema), 1):
        columns.append(_column(part, source, number, lenient))
    if not columns:
        raise DatafileError(f"{source}: the schema has no columns")
    return columns


def split_columns(schema: str) -> list[str]:
    """Split ``a String, b Map(String, String) DEFAULT map()`` at its top-level commas."""
    parts, depth, quote, start = [], 0, "", 0
    for index, char in enumerate(schema):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'`\"":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char in ",\n" and depth == 0:
            parts.append(schema[start:index])
            start = index + 1
    parts.append(schema[start:])
    return [part.strip() for part in parts if part.strip()]


def sql_schema(columns: list[Column]) -> str:
    """The schema as the Data Sources API reports it (``schema.sql_schema``)."""
    return ", ".join(column_line(c) for c in columns)


def column_line(column: Column) -> str:
    """One SCHEMA line, without the trailing comma."""
    default = f" DEFAULT {column.default_sql}" if column.default_sql else ""
    return f"`{column.name}` {column.type.name} `json:{column.json_path}`{default}"
