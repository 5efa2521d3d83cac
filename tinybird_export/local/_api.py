"""Tinybird's HTTP API as the local server answers it: the state the routes share, SQL and
the Data Sources API.

Every route answers what Tinybird's own clients read (``tb`` Classic and Forward,
tinybird-sdk, verdin): see the README's section on the local server.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import threading
from collections.abc import Callable
from typing import Any

from tinybird_export import _ingest_body
from tinybird_export.local import _datafile
from tinybird_export.local._datafile import DataFile, DatafileError
from tinybird_export.local._engine import (
    DataSourceInfo,
    Engine,
    QueryError,
    UnknownDataSource,
    now_text,
)
from tinybird_export.local._request import Request, Response, csv_rows

WORKSPACE = "tinybird_export_local"
USER_EMAIL = "local@tinybird-export.invalid"
Handler = Callable[["State", Request, dict[str, str]], Response]
JOBS_KEPT = 1000
"""Jobs and deployments kept in memory (and listed) for the server's life: the newest."""


@dataclasses.dataclass
class State:
    """What the routes share: the engine, the token and the server's bookkeeping."""

    engine: Engine
    strict: bool
    max_body_bytes: int
    host_names: frozenset[str] = frozenset()
    """Names the server answers to besides loopback ones and IP addresses (``--host``)."""
    allow_remote_tokens: bool = False
    """Answer ``GET /tokens`` to other machines too."""
    workspaces: list[str] = dataclasses.field(default_factory=lambda: [WORKSPACE])
    token_names: list[str] = dataclasses.field(default_factory=list)
    """Names given to the one token (``TOKEN`` lines pushed by Classic ``tb push``)."""
    jobs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    deployments: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    _ids: itertools.count[int] = dataclasses.field(default_factory=lambda: itertools.count(1))

    @property
    def token(self) -> str:
        """The one token."""
        return self.engine.token

    def next_id(self) -> str:
        """A new job or deployment id."""
        with self.lock:
            return str(next(self._ids))

    def add_job(self, name: str, ok: int, quarantined: int, **extra: Any) -> dict[str, Any]:
        """Record a finished import job, in the Jobs API's shape."""
        job_id = self.next_id()
        job = {
            "id": job_id,
            "job_id": job_id,
            "import_id": job_id,
            "kind": "import",
            "status": "done",
            "created_at": now_text(),
            "updated_at": now_text(),
            "datasource": {"id": f"t_{name}", "name": name},
            "statistics": {"row_count": ok, "bytes": 0},
            "quarantine_rows": quarantined,
            "invalid_lines": 0,
            "blocks": [
                {
                    "block_id": job_id,
                    "process_return": [
                        {"lines": ok, "quarantine": quarantined, "bytes": 0, "parser": "python"}
                    ],
                    "processing_time": 0.0,
                }
            ],
            "errors": [],
            **extra,
        }
        with self.lock:
            self.jobs[job_id] = job
            while len(self.jobs) > JOBS_KEPT:  # the oldest go, as Tinybird's expire
                del self.jobs[next(iter(self.jobs))]
        return job


def datasource_json(info: DataSourceInfo) -> dict[str, Any]:
    """A data source as the Data Sources API describes it."""
    engine = info.datafile.engine
    columns = [
        {
            "name": c.name,
            "normalized_name": c.name,
            "type": c.type.name,
            "nullable": c.type.nullable,
            "codec": None,
            "default_value": f"DEFAULT {c.default_sql}" if c.default_sql else None,
            "jsonpath": c.json_path,
        }
        for c in info.columns
    ]
    return {
        "id": f"t_{info.name}",
        "name": info.name,
        "description": info.datafile.description,
        "type": "ndjson",
        "created_at": info.created_at,
        "updated_at": info.updated_at,
        "statistics": {"row_count": info.row_count, "bytes": info.bytes},
        "quarantine_rows": info.quarantine_rows,
        "schema": {"columns": columns, "sql_schema": _datafile.sql_schema(info.columns)},
        "columns": columns,
        "engine": {
            "engine": engine.get("ENGINE", "MergeTree"),
            "sorting_key": engine.get("ENGINE_SORTING_KEY", ""),
            "partition_key": engine.get("ENGINE_PARTITION_KEY", ""),
            "ttl": engine.get("ENGINE_TTL"),
        },
        "used_by": [],
        "shared_with": [],
        "indexes": [],
        "tags": {},
        "headers": {},
        "version": 0,
    }


def find(state: State, name: str) -> DataSourceInfo | None:
    """The data source ``name``, with fresh statistics, or None."""
    return next((i for i in state.engine.datasources() if i.name == name), None)


def _datasources(state: State, request: Request, args: dict[str, str]) -> Response:
    listed = [datasource_json(i) for i in state.engine.datasources()]
    return Response.json(200, {"datasources": listed})


def _datasource(state: State, request: Request, args: dict[str, str]) -> Response:
    info = find(state, args["name"])
    if info is None:
        return Response.error(404, f'Data Source "{args["name"]}" does not exist')
    if args.get("ext") == ".datasource":
        # tb pull parses the body as text only when the Content-Type is exactly text/plain.
        return Response(200, _datafile.render(info.datafile).encode(), "text/plain")
    return Response.json(200, datasource_json(info))


def _post_datasources(state: State, request: Request, args: dict[str, str]) -> Response:
    form = request.form()
    name = form.get("name", "")
    mode = form.get("mode", "create")
    if mode in ("append", "replace"):
        return _append(state, request, name, form, replace=mode == "replace")
    if "schema" not in form:
        return Response.error(400, "creating a data source needs a 'schema' parameter")
    lenient = state.engine.name == "clickhouse"
    try:
        columns = _datafile.parse_schema(form["schema"], f"data source {name!r}", lenient=lenient)
        engine = {
            key: form[key.lower()]
            for key in ("ENGINE", *_datafile.ENGINE_KEYS)
            if form.get(key.lower())
        }
        datafile = DataFile(name, columns, form.get("description", ""), engine)
        if not state.engine.declare(datafile) and form.get("force") != "true":
            return Response.error(409, f'Data Source "{name}" already exists')
    except (DatafileError, ValueError) as exc:
        return Response.error(400, str(exc))
    info = find(state, name)
    return Response.json(200, {"datasource": datasource_json(info) if info else {"name": name}})


def _append(
    state: State, request: Request, name: str, form: dict[str, str], *, replace: bool
) -> Response:
    info = find(state, name)
    if info is None:
        return Response.error(404, f'Data Source "{name}" does not exist: create it first')
    fmt = form.get("format", "csv")
    parts = [p for p in request.parts() if p.filename is not None or p.name in ("csv", "ndjson")]
    body = parts[0].content if parts else request.body
    try:
        raw = _ingest_body.decode(
            body, request.headers.get("Content-Encoding"), state.max_body_bytes
        )
        if raw[:2] == b"\x1f\x8b":
            raw = _ingest_body.decode(raw, "gzip", state.max_body_bytes)
        if fmt == "ndjson" or (fmt == "csv" and raw.lstrip()[:1] == b"{"):
            rows = _ingest_body.parse_rows(raw)
        elif fmt == "csv":
            rows = csv_rows(info.columns, raw.decode("utf-8", "replace"))
        else:
            return Response.error(
                400, f"format {fmt!r} is not supported locally: use ndjson or csv"
            )
    except _ingest_body.BodyError as exc:
        return Response.error(exc.status, str(exc))
    if replace:
        state.engine.truncate(name)
    ok, quarantined = state.engine.ingest(name, rows, create=False)
    job = state.add_job(name, ok, quarantined)
    answer = {**job, "datasource": datasource_json(find(state, name) or info)}
    return dataclasses.replace(Response.json(200, answer), rows=ok, quarantined=quarantined)


def _truncate(state: State, request: Request, args: dict[str, str]) -> Response:
    try:
        state.engine.truncate(args["name"])
    except UnknownDataSource:
        return Response.error(404, f'Data Source "{args["name"]}" does not exist')
    return Response.json(200, {})


def _drop(state: State, request: Request, args: dict[str, str]) -> Response:
    try:
        state.engine.drop(args["name"])
    except UnknownDataSource:
        return Response.error(404, f'Data Source "{args["name"]}" does not exist')
    return Response(204)


def _delete_rows(state: State, request: Request, args: dict[str, str]) -> Response:
    form = request.form()
    condition = (form.get("delete_condition") or "").strip()
    if not condition:
        return Response.error(400, "'delete_condition' is required: the rows to delete")
    dry_run = form.get("dry_run") == "true"
    try:
        matched = state.engine.delete_rows(
            args["name"], condition, dry_run=dry_run, cancel=request.cancel
        )
    except UnknownDataSource:
        return Response.error(404, f'Data Source "{args["name"]}" does not exist')
    except QueryError as exc:
        return Response.error(exc.status, f"[Error] {exc}")
    if dry_run:
        return Response.json(200, {"rows_to_be_deleted": matched})
    job = state.add_job(args["name"], 0, 0, kind="delete_data", rows_affected=matched)
    return Response.json(200, {**job, "job": job, "delete_id": job["id"]})


def _alter(state: State, request: Request, args: dict[str, str]) -> Response:
    info = find(state, args["name"])
    if info is None:
        return Response.error(404, f'Data Source "{args["name"]}" does not exist')
    schema = request.form().get("schema")
    same = schema is None or re.sub(r"\s", "", schema) == re.sub(
        r"\s", "", _datafile.sql_schema(info.columns)
    )
    if same:
        return Response.error(400, "There were no operations to perform")
    return Response.error(
        400,
        "altering a data source's schema is not supported by tinybird-export local: "
        "delete it (or truncate and re-create it) and push again",
    )


def _sql(state: State, request: Request, args: dict[str, str]) -> Response:
    sql = request.query.get("q", "")
    if request.method == "POST" and not sql:
        form = request.form() if "form" in request.content_type else {}
        sql = form.get("q") or ""
        if not sql:
            text = request.body.decode("utf-8", "replace")
            # curl --data "SELECT ..." sends the SQL as a form body without a q field.
            sql = urlencoded_sql(text) if "form-urlencoded" in request.content_type else text
    if not sql.strip():
        return Response.error(400, "The 'q' parameter is required: the SQL to run")
    try:
        result = state.engine.query(sql, request.cancel)
    except QueryError as exc:
        return Response.error(exc.status, f"[Error] {exc}")
    return Response(200, result.body, result.content_type, rows=result.rows)


def urlencoded_sql(text: str) -> str:
    """The SQL of a form body: its ``q`` field, or the body itself when it has none."""
    import urllib.parse  # noqa: PLC0415

    fields = dict(urllib.parse.parse_qsl(text, keep_blank_values=True))
    return fields.get("q") or text


ROUTES: list[tuple[str, re.Pattern[str], Handler]] = [
    ("GET", re.compile(r"/v0/datasources/?"), _datasources),
    ("POST", re.compile(r"/v0/datasources/?"), _post_datasources),
    ("GET", re.compile(r"/v0/datasources/(?P<name>\w+)(?P<ext>\.datasource)?"), _datasource),
    ("POST", re.compile(r"/v0/datasources/(?P<name>\w+)/truncate/?"), _truncate),
    ("POST", re.compile(r"/v[01]/datasources/(?P<name>\w+)/delete/?"), _delete_rows),
    ("DELETE", re.compile(r"/v0/datasources/(?P<name>\w+)/?"), _drop),
    ("POST", re.compile(r"/v0/datasources/(?P<name>\w+)/alter/?"), _alter),
    ("GET", re.compile(r"/v0/sql/?"), _sql),
    ("POST", re.compile(r"/v0/sql/?"), _sql),
]
EMPTY: dict[str, dict[str, list[Any]]] = {
    "/v0/pipes": {"pipes": []},
    "/v0/variables": {"variables": []},
    "/v0/regions": {"regions": []},
    "/v0/connectors": {"connectors": []},
    "/v0/environments": {"environments": []},
    "/v0/tags": {"tags": []},
}
