"""``.datasource`` files: Tinybird's datafile syntax, read for the local server's schemas.

Only the ``SCHEMA >`` block matters here: one column per line, as
``` `name` Type `json:$.path` [DEFAULT expr] ```; the ``ENGINE`` lines are ignored.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson

from tinybird_export.local._schema import Column, parse_type

_COLUMN_LINE = re.compile(r"`?(?P<name>\w+)`?\s+(?P<rest>.+?),?\s*\Z")


def parse_datasource(text: str) -> list[Column]:
    """The columns of a ``.datasource`` file's ``SCHEMA >`` block.

    Lines read ``` `name` Type `json:$.path` [DEFAULT expr] ```; without a JSONPath the
    column reads ``$.name``.
    """
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip().startswith("SCHEMA"))
    except StopIteration:
        raise ValueError("no SCHEMA > block") from None
    columns = []
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        if not line[0].isspace():
            break
        match = _COLUMN_LINE.match(line.strip())
        if match is None:
            raise ValueError(f"cannot read column line {line.strip()!r}")
        columns.append(_parse_column(match["name"], match["rest"]))
    return columns


def _parse_column(name: str, rest: str) -> Column:
    depth, end = 0, len(rest)
    for index, char in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char in " `" and depth == 0:
            end = index
            break
    column_type = parse_type(rest[:end])
    rest = rest[end:].strip()
    path: tuple[str, ...] = (name,)
    json_path = re.match(r"`json:\$\.?([^`]*)`", rest)
    if json_path:
        path = tuple(json_path.group(1).replace("[:]", "").split("."))
        rest = rest[json_path.end() :].strip()
    default_match = re.match(r"DEFAULT\s+(.+)", rest)
    if default_match is None:
        return Column(name, column_type, path)
    return Column(name, column_type, path, _literal(default_match.group(1)), True)


def _literal(expr: str) -> Any:
    """A DEFAULT expression's value: quoted strings, numbers, [], {}, now() and friends."""
    expr = expr.strip().rstrip(",")
    if expr.startswith("'") and expr.endswith("'"):
        return expr[1:-1]
    if expr in ("[]", "{}", "map()"):
        return "[]" if expr == "[]" else "{}"
    if re.fullmatch(r"now(64)?\(.*\)", expr):
        return "now"
    try:
        return orjson.loads(expr)
    except orjson.JSONDecodeError:
        return expr


def load_datasources(directory: Path) -> dict[str, list[Column]]:
    """Every ``*.datasource`` file under ``directory``, by data source name."""
    return {
        path.stem: parse_datasource(path.read_text())
        for path in sorted(directory.glob("**/*.datasource"))
    }
