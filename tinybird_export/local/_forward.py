"""Tinybird Forward's project routes: ``/v1/build``, ``/v1/deploy``, deployments, jobs and
``/v1/datasources/{name}/append``, for projects made of ``.datasource`` files.

A build or deploy creates the data sources that do not exist and replaces those whose schema
changed (a build is Tinybird's throwaway workspace; here the data is the user's, so an
unchanged data source keeps its rows). A project with any other kind of file (``.pipe``,
``.connection``) fails, naming the file: the local server serves data sources and SQL only.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import PurePosixPath
from typing import Any

from tinybird_export import _ingest_body
from tinybird_export.local import _datafile
from tinybird_export.local._api import JOBS_KEPT, Handler, State, find
from tinybird_export.local._datafile import DataFile, DatafileError
from tinybird_export.local._engine import now_text
from tinybird_export.local._request import Request, Response, csv_rows


def _project(state: State, request: Request) -> tuple[list[DataFile], list[dict[str, str]]]:
    datafiles, errors = [], []
    lenient = state.engine.name == "clickhouse"
    for part in request.parts():
        if not part.name.startswith("data_project") or part.filename is None:
            continue
        filename = part.filename
        suffix = PurePosixPath(filename).suffix
        if suffix != ".datasource":
            errors.append(
                {
                    "filename": filename,
                    "error": f"{filename}: {suffix or 'this'} files are not supported by "
                    "tinybird-export local, which serves data sources and SQL only: move it "
                    "out of the project to build or deploy here",
                }
            )
            continue
        try:
            datafiles.append(
                _datafile.parse_datafile(part.content.decode(), filename, lenient=lenient)
            )
        except DatafileError as exc:
            errors.append({"filename": filename, "error": str(exc)})
        except UnicodeDecodeError as exc:
            error = f"{filename}: not UTF-8 text (byte {exc.start}: {exc.reason})"
            errors.append({"filename": filename, "error": error})
    return datafiles, errors


def _apply(
    state: State, datafiles: list[DataFile]
) -> tuple[list[str], list[str], list[dict[str, str]]]:
    new: list[str] = []
    changed: list[str] = []
    errors: list[dict[str, str]] = []
    for datafile in datafiles:
        existing = find(state, datafile.name)
        same = existing is not None and _datafile.sql_schema(existing.columns) == (
            _datafile.sql_schema(datafile.columns)
        )
        if same:
            continue
        try:
            state.engine.declare(datafile, replace=True)
        except (DatafileError, ValueError) as exc:
            errors.append({"filename": f"{datafile.name}.datasource", "error": str(exc)})
            continue
        (changed if existing else new).append(datafile.name)
    return new, changed, errors


def _build(state: State, request: Request, args: dict[str, str]) -> Response:
    datafiles, errors = _project(state, request)
    if errors:
        return Response.json(400, {"result": "failed", "errors": errors})
    new, changed, errors = _apply(state, datafiles)
    if errors:
        return Response.json(400, {"result": "failed", "errors": errors})
    build = {
        "new_datasource_names": new,
        "changed_datasource_names": changed,
        "deleted_datasource_names": [],
        "new_pipe_names": [],
        "changed_pipe_names": [],
        "deleted_pipe_names": [],
        "feedback": [],
    }
    return Response.json(200, {"result": "success", "build": build})


def _deploy(state: State, request: Request, args: dict[str, str]) -> Response:
    datafiles, errors = _project(state, request)
    if not errors and request.query.get("check") != "true":
        new, changed, errors = _apply(state, datafiles)
    else:
        new, changed = [], []
    deployment_id = state.next_id()
    deployment = {
        "id": deployment_id,
        "status": "failed" if errors else "data_ready",
        "live": not errors,
        "created_at": now_text(),
        "new_datasource_names": new,
        "changed_datasource_names": changed,
        "deleted_datasource_names": [],
        "new_pipe_names": [],
        "changed_pipe_names": [],
        "deleted_pipe_names": [],
        "new_data_connector_names": [],
        "errors": errors,
        "feedback": [],
    }
    if not errors:
        with state.lock:
            for old in state.deployments:
                old["live"] = False
            state.deployments.append(deployment)
            del state.deployments[:-JOBS_KEPT]
    status = 400 if errors else 200
    return Response.json(
        status, {"result": "failed" if errors else "success", "deployment": deployment}
    )


def _deployments(state: State, request: Request, args: dict[str, str]) -> Response:
    with state.lock:
        if "id" not in args:
            return Response.json(200, {"deployments": list(reversed(state.deployments))})
        found = next((d for d in state.deployments if d["id"] == args["id"]), None)
    if found is None:
        return Response.error(404, f"deployment {args['id']} not found")
    return Response.json(200, {"deployment": found})


def _jobs(state: State, request: Request, args: dict[str, str]) -> Response:
    with state.lock:
        if "id" not in args:
            return Response.json(200, {"jobs": list(reversed(state.jobs.values()))})
        job = state.jobs.get(args["id"])
    if job is None:
        return Response.error(404, f"job {args['id']} not found")
    return Response.json(200, job)


def _append_v1(state: State, request: Request, args: dict[str, str]) -> Response:
    name = args["name"]
    info = find(state, name)
    if info is None:
        return Response.error(404, f'Data Source "{name}" does not exist: deploy it first')
    fmt = request.query.get("format", "ndjson")
    try:
        raw = _ingest_body.decode(
            request.body, request.headers.get("Content-Encoding"), state.max_body_bytes
        )
        if fmt == "ndjson":
            rows: list[dict[str, Any]] = _ingest_body.parse_rows(raw)
        elif fmt == "csv":
            rows = csv_rows(info.columns, raw.decode("utf-8", "replace"))
        else:
            return Response.error(
                400, f"format {fmt!r} is not supported locally: use ndjson or csv"
            )
    except _ingest_body.BodyError as exc:
        return Response.error(exc.status, str(exc))
    ok, quarantined = state.engine.ingest(name, rows, create=False)
    job = state.add_job(name, ok, quarantined)
    answer = Response.json(200, {"id": job["id"], "import_id": job["id"], "job": job})
    return dataclasses.replace(answer, rows=ok, quarantined=quarantined)


ROUTES: list[tuple[str, re.Pattern[str], Handler]] = [
    ("POST", re.compile(r"/v1/build/?"), _build),
    ("POST", re.compile(r"/v1/deploy/?"), _deploy),
    ("GET", re.compile(r"/v1/deployments/?"), _deployments),
    ("GET", re.compile(r"/v1/deployments/(?P<id>\w+)/?"), _deployments),
    ("GET", re.compile(r"/v[01]/jobs/?"), _jobs),
    ("GET", re.compile(r"/v[01]/jobs/(?P<id>\w+)/?"), _jobs),
    ("POST", re.compile(r"/v1/datasources/(?P<name>\w+)/append/?"), _append_v1),
]
