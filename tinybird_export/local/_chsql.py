"""ClickHouse-engine helpers: the read-only verdict on a query's syntax tree, error messages,
the CREATE TABLE for a ``.datasource`` file, and the catalog file beside the data.
"""

from __future__ import annotations

import re
from pathlib import Path

import orjson

from tinybird_export.local._datafile import DataFile
from tinybird_export.local._engine import DataSourceInfo, QueryError, ReadOnlyError
from tinybird_export.local._schema import Column

_ROOTS = (
    "SelectWithUnionQuery",
    "SelectQuery",
    "ShowTables",
    "ShowColumns",
    "DescribeQuery",
    "Explain",
    "ExistsTableQuery",
    "ShowCreateTableQuery",
)
_TABLE_FUNCTIONS = frozenset(
    {
        "numbers",
        "numbers_mt",
        "generaterandom",
        "values",
        "view",
        "null",
        "merge",
        "generate_series",
        "generateseries",
        "zeros",
        "zeros_mt",
    }
)
_DENIED_FUNCTIONS = frozenset({"file", "catboostevaluate", "evalmlmodel"})
_FUNCTION = re.compile(r"^(\s*)Function (\w+)")
_CODE = re.compile(r"Code: (\d+)\.")
READ_ONLY = (
    "the local server is read-only: /v0/sql runs SELECT queries only (send rows to "
    "/v0/events or the Data Sources API)"
)


def create_table(datafile: DataFile) -> str:
    """The CREATE TABLE for a data source: its types, DEFAULTs and ENGINE_* keys."""
    definitions = []
    for column in datafile.columns:
        default = f" DEFAULT {column.default_sql}" if column.default_sql else ""
        definitions.append(f"`{column.name}` {column.type.name}{default}")
    engine = datafile.engine
    name = engine.get("ENGINE", "MergeTree")
    # The engine arguments, from the keys Tinybird's datasource files use
    # (https://tinybird.co/docs/v2/datafiles/datasource-files).
    arguments = {
        "ReplacingMergeTree": engine.get("ENGINE_VER", ""),
        "CollapsingMergeTree": engine.get("ENGINE_SIGN", ""),
        "VersionedCollapsingMergeTree": ", ".join(
            v for v in (engine.get("ENGINE_SIGN"), engine.get("ENGINE_VERSION")) if v
        ),
    }.get(name, "")
    clauses = [f"ENGINE = {name}({arguments})"]
    if engine.get("ENGINE_PARTITION_KEY"):
        clauses.append(f"PARTITION BY {engine['ENGINE_PARTITION_KEY']}")
    clauses.append(f"ORDER BY ({engine.get('ENGINE_SORTING_KEY') or 'tuple()'})")
    if engine.get("ENGINE_TTL"):
        clauses.append(f"TTL {engine['ENGINE_TTL']}")
    settings = ", ".join(filter(None, ["allow_nullable_key = 1", engine.get("ENGINE_SETTINGS")]))
    clauses.append(f"SETTINGS {settings}")
    return f"CREATE TABLE `{datafile.name}` ({', '.join(definitions)}) {' '.join(clauses)}"


def reason(exc: Exception) -> str:
    """ClickHouse's message without the ``Code: N. DB::Exception:`` prefix and version."""
    text = str(exc).strip()
    text = re.sub(r"^(Code: \d+\. DB::Exception: )+", "", text)
    text = re.sub(r"\s*\(version [^)]*\)", "", text)
    return re.sub(r":? In scope .*?(?=\. \(|\Z)", "", text, flags=re.DOTALL).strip()


def column_of(exc: Exception) -> str:
    """The column a ClickHouse error names, or an empty string."""
    match = re.search(r"column '?`?(\w+)`?'?", str(exc))
    return match.group(1) if match else ""


def refusal(tree: str) -> str | None:
    """Why the query whose ``EXPLAIN AST`` is ``tree`` may not run, or None.

    It must be a SELECT/SHOW/DESCRIBE/EXPLAIN/EXISTS whose table functions are generators,
    and call no function that reads files: ``readonly=1`` already refuses writes, DDL,
    SYSTEM, settings and the table functions that read files or the network, but not the
    scalar ``file()`` (and not KILL).
    """
    lines = tree.splitlines()
    root = lines[0].split()[0] if lines else ""
    if root not in _ROOTS:
        return READ_ONLY
    for number, line in enumerate(lines):
        match = _FUNCTION.match(line)
        if match is None:
            continue
        function = match.group(2).lower()
        table_function = number > 0 and lines[number - 1].strip().startswith("TableExpression")
        if function in _DENIED_FUNCTIONS or (table_function and function not in _TABLE_FUNCTIONS):
            return f"{READ_ONLY}; {match.group(2)}() is not allowed"
    return None


def query_error(exc: Exception, datasources: list[str]) -> QueryError:
    """The answer to a query ClickHouse refused: read-only, unknown table, or its reason."""
    text = reason(exc)
    code = _CODE.search(str(exc))
    if code and code.group(1) == "164":
        return ReadOnlyError(READ_ONLY)
    if code and code.group(1) == "60":
        existing = ", ".join(datasources) or "none yet (send events first)"
        return QueryError(f"{text}. Data sources: {existing}")
    return QueryError(text)


def load_meta(path: Path) -> tuple[str, dict[str, DataSourceInfo]]:
    """The token and the data sources kept in ``path``."""
    meta = orjson.loads(path.read_bytes())
    infos = {}
    for name, stored in meta["datasources"].items():
        columns = [Column.from_json(c, lenient=True) for c in stored["columns"]]
        datafile = DataFile(name, columns, stored["description"], stored["engine"])
        infos[name] = DataSourceInfo(datafile, stored["created_at"], stored["updated_at"])
    return str(meta["token"]), infos


def save_meta(path: Path, token: str, infos: dict[str, DataSourceInfo]) -> None:
    """Write the token and the data sources to ``path`` (mode 0600), atomically."""
    meta = {
        "token": token,
        "datasources": {
            name: {
                "columns": [c.to_json() for c in info.columns],
                "description": info.datafile.description,
                "engine": info.datafile.engine,
                "created_at": info.created_at,
                "updated_at": info.updated_at,
            }
            for name, info in infos.items()
        },
    }
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    temporary.chmod(0o600)  # it holds the token
    temporary.replace(path)
