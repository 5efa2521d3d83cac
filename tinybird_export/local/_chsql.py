"""ClickHouse-engine helpers: error messages, the CREATE TABLE for a ``.datasource`` file, and
the catalog file beside the data (the read-only verdict is ``_chcheck``'s).
"""

from __future__ import annotations

import re
from pathlib import Path

import orjson

from tinybird_export.local import _limits
from tinybird_export.local._chcheck import READ_ONLY
from tinybird_export.local._datafile import DataFile
from tinybird_export.local._engine import DataSourceInfo, QueryError, ReadOnlyError
from tinybird_export.local._schema import Column

SETTINGS = "session_timezone=UTC&output_format_json_quote_64bit_integers=0"
"""What every connection of the engine shares."""
_CODE = re.compile(r"Code: (\d+)\.")
_TIMEOUT, _CANCELLED, _READONLY, _UNKNOWN_TABLE = "159", "394", "164", "60"


def create_table(datafile: DataFile, *, settings: bool = True) -> str:
    """The CREATE TABLE for a data source: its types, DEFAULTs and ENGINE_* keys (and its
    SETTINGS, unless not ``settings``: see ``table_settings``).
    """
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
    if settings:
        clauses.append(f"SETTINGS {table_settings(datafile)}")
    return f"CREATE TABLE `{datafile.name}` ({', '.join(definitions)}) {' '.join(clauses)}"


def table_settings(datafile: DataFile) -> str:
    """The SETTINGS of a data source's table."""
    return ", ".join(
        filter(None, ["allow_nullable_key = 1", datafile.engine.get("ENGINE_SETTINGS")])
    )


def reason(exc: Exception) -> str:
    """ClickHouse's message without the ``Code: N. DB::Exception:`` prefix and version."""
    text = str(exc).strip()
    text = re.sub(r"^(Code: \d+\. DB::Exception: )+", "", text)
    # Plain scans, no backtracking: the message quotes the query, which may hold runs of
    # spaces or the words themselves (a regex's \s* or .*? made it quadratic: 9 s for a
    # 100 KB literal, holding the GIL).
    text = re.sub(r" ?\(version [^)]*\)", "", text)
    kept, position = [], 0
    while (start := text.find(" In scope ", position)) != -1:
        end = text.find(". (", start)
        kept.append(text[position : start - 1 if text[start - 1 : start] == ":" else start])
        position = len(text) if end == -1 else end
    return ("".join(kept) + text[position:]).strip()


def column_of(exc: Exception) -> str:
    """The column a ClickHouse error names, or an empty string."""
    match = re.search(r"column '?`?(\w+)`?'?", str(exc))
    return match.group(1) if match else ""


def query_error(exc: Exception, datasources: list[str], *, stopping: bool) -> QueryError:
    """The answer to a query ClickHouse refused: read-only, unknown table, over the time
    limit (408, as Tinybird), interrupted by the server's stop (503), or its reason.
    """
    text = reason(exc)
    match = _CODE.search(str(exc))
    code = match.group(1) if match else ""
    if code == _READONLY and "Cannot modify" in text:
        return ReadOnlyError(f"{READ_ONLY}; SETTINGS is not allowed (Tinybird refuses it too)")
    if code == _READONLY:
        return ReadOnlyError(READ_ONLY)
    if code == _UNKNOWN_TABLE:
        existing = ", ".join(datasources) or "none yet (send events first)"
        return QueryError(f"{text}. Data sources: {existing}")
    if code == _TIMEOUT:
        limit = _limits.QUERY_SECONDS
        return _limits.QueryTimeout(f"{text} (Tinybird's limit too: {limit} s)")
    if code == _CANCELLED and stopping:
        return _limits.ServerStopping()
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
