"""The ClickHouse engine's verdict on a data source's ``CREATE TABLE``, which runs on the
writer's connection (not read-only): what a ``.datasource`` file or a Data Sources API call
may make it do.

Its pieces are the client's text (column types, ``DEFAULT`` expressions, ``ENGINE`` and its
``ENGINE_*`` keys), from a project directory (``--datasources DIR``: a cloned repository is
not trusted) or a client holding the token, which may read the workspace but not the machine.
So, as for ``/v0/sql`` (``_chcheck``), the text never runs as written: ClickHouse's parser
must find exactly one statement in it (chDB runs every statement of a text), and its own
spelling is checked and run. The table must be one of Tinybird's engines (MergeTree's family
and Null: no ``File``, ``URL`` or other engine that reads or writes outside the database),
its expressions may call no function that reads outside the query (``file()``, dictionaries),
hold no subquery, and its ``SETTINGS`` only literal values (``disk = disk(...)`` would put
the table's files anywhere).
"""

from __future__ import annotations

import re
from typing import Any

from tinybird_export.local import _chcheck, _chsql
from tinybird_export.local._datafile import DataFile, DatafileError
from tinybird_export.local._engine import ReadOnlyError

ENGINES = frozenset(
    {
        # Tinybird's (https://www.tinybird.co/docs/sql-reference/engines)
        "MergeTree",
        "ReplacingMergeTree",
        "SummingMergeTree",
        "AggregatingMergeTree",
        "CollapsingMergeTree",
        "VersionedCollapsingMergeTree",
        "Null",
    }
)
# The nodes of a data source's CREATE TABLE without its SETTINGS: columns (types, DEFAULT
# expressions), the engine's keys and TTL. No Subquery, no table expression, no Set.
_NODES = frozenset(
    {
        "CreateQuery",
        "Identifier",
        "Columns",  # "Columns definition"
        "ExpressionList",
        "ColumnDeclaration",
        "DataType",
        "EnumDataType",
        "TupleDataType",
        "NameTypePair",
        "ASTObjectTypeArgument",  # JSON(max_dynamic_paths = 10, a.b String, SKIP a.c)
        "ObjectTypedPath",
        "Function",
        "Literal",
        "Storage",  # "Storage definition"
        "TTLElement",
        "OrderByElement",
    }
)
_VALUE = r"(?:'[^'\\]*'|-?[0-9][0-9.eE+-]*|true|false)"
_SETTINGS = re.compile(rf"\s*\w+\s*=\s*{_VALUE}\s*(?:,\s*\w+\s*=\s*{_VALUE}\s*)*\Z", re.I)


def checked_create(connection: Any, datafile: DataFile) -> str:
    """The ``CREATE TABLE`` text for ``datafile`` in ClickHouse's own spelling, once allowed.

    The statement is checked without its ``SETTINGS``, which the syntax tree does not show:
    a key that ends the statement early (``a) SETTINGS disk = disk(...) --``) is refused as
    a ``Set`` node, and the checked ``SETTINGS`` are added to ClickHouse's spelling after.

    Args:
        connection: A chDB connection (only parses: nothing runs).
        datafile: The data source: its columns, source (for the error's file name), engine
            and settings.

    Raises:
        DatafileError: The reason, naming the file.
        RuntimeError: ClickHouse cannot parse it (chDB's error: the caller names the column).
    """
    source = datafile.source or f"data source {datafile.name!r}"
    engine = datafile.engine.get("ENGINE", "MergeTree")
    if engine.removesuffix("()") not in ENGINES:
        raise DatafileError(
            f"{source}: ENGINE {engine!r} is not one of {', '.join(sorted(ENGINES))} "
            "(Tinybird's; others read or write files outside the database)"
        )
    settings = datafile.engine.get("ENGINE_SETTINGS")
    if settings and not _SETTINGS.match(settings):
        raise DatafileError(
            f"{source}: ENGINE_SETTINGS {settings!r}: name = value pairs of literal values only"
        )
    create = _chsql.create_table(datafile, settings=False)
    answer = connection.query(_chcheck.canonical_query(create), "TSVRaw")
    spelled: str = answer.bytes().decode().strip()
    tree = connection.query(f"EXPLAIN AST {spelled}", "TSVRaw").bytes().decode()
    reason = refusal(tree)
    if reason:
        raise DatafileError(f"{source}: {reason}")
    return f"{spelled} SETTINGS {_chsql.table_settings(datafile)}"


def refusal(dump: str) -> str | None:
    """Why the ``CREATE TABLE`` whose ``EXPLAIN AST`` is ``dump`` may not run, or None."""
    try:
        root = _chcheck.parse_tree(dump)
    except ReadOnlyError:
        return "the table's syntax tree could not be checked"
    if root.kind != "CreateQuery":
        return "a data source is one CREATE TABLE"
    storage = [c for c in root.children if c.kind == "Storage"]
    if len(storage) != 1 or not storage[0].children or storage[0].children[0].kind != "Function":
        return "the table's ENGINE could not be checked"
    engine = storage[0].children[0].name.split(" ")[0]
    if engine not in ENGINES:
        return f"ENGINE {engine} is not one of {', '.join(sorted(ENGINES))}"
    return _walk(root)


def _walk(node: _chcheck.Node) -> str | None:
    if node.kind not in _NODES:
        return f"{node.kind} is not allowed in a data source's definition"
    if node.kind == "Function":
        function = node.name.split(" ")[0]
        if _chcheck.reads_outside(function):
            return f"{function}() is not allowed: it reads outside the table"
    for child in node.children:
        reason = _walk(child)
        if reason:
            return reason
    return None
