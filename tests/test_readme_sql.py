"""Every SQL example in the README and the docs runs unchanged on both engines: SQLite, which a
plain install gets, and ClickHouse (chDB, the ``local`` extra, which the tests' install adds).
The ClickHouse-only queries of docs/integrations.md (its ``sql`` blocks, which say so) run in
tests/test_otel_metrics.py."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from tests.local_helpers import ENGINES, ndjson, post
from tinybird_export.cli import main as cli_main
from tinybird_export.local import LocalServer

ROOT = Path(__file__).resolve().parent.parent
# The pages that hold SQL examples: `tinybird-export sql "..."` lines and inline `select ...`.
PAGES = ("README.md", "docs/local.md", "docs/integrations.md")
README = "\n".join((ROOT / name).read_text() for name in PAGES)


def examples() -> list[str]:
    """``tinybird-export sql "..."`` commands and inline ``select ...`` spans."""
    found = []
    for line in README.splitlines():
        if line.removeprefix(".venv/bin/").startswith("tinybird-export sql "):
            found.append(shlex.split(line, comments=True)[2])
    found += re.findall(r"`((?:select|SELECT) [^`]+)`", README)
    return list(dict.fromkeys(found))


ROWS: dict[str, list[dict[str, Any]]] = {
    "app_logs": [
        {
            "timestamp": "2024-01-01 00:00:01.000000",
            "event": "checkout",
            "event_id": "1",
            "level": "INFO",
            "logger": "shop",
            "attributes": {"cart_id": "42"},
        },
        {
            "timestamp": "2024-01-01 00:01:02.000000",
            "event": "boom",
            "event_id": "2",
            "level": "ERROR",
            "logger": "shop",
        },
    ],
    "simple_events": [
        {"timestamp": "2024-01-01 00:00:00", "event": "page_view", "session_id": "s1"},
        {"timestamp": "2024-01-01 00:00:01", "event": "click", "session_id": "s1"},
    ],
    "otel_metrics_sum": [
        {
            "resource_attributes": {},
            "resource_schema_url": "",
            "scope_name": "shop",
            "scope_version": "",
            "scope_attributes": {},
            "scope_schema_url": "",
            "service_name": "shop",
            "metric_name": "http.server.requests",
            "metric_description": "",
            "metric_unit": "1",
            "metric_attributes": {"route": "/"},
            "start_timestamp": "2024-01-01 00:00:00",
            "timestamp": "2024-01-01 00:01:00",
            "value": 3.0,
            "flags": 0,
            "exemplars_trace_id": [],
            "exemplars_span_id": [],
            "exemplars_timestamp": [],
            "exemplars_value": [],
            "exemplars_filtered_attributes": [],
            "aggregation_temporality": 1,
            "is_monotonic": True,
        }
    ],
    "traces": [
        {
            "timestamp": "2024-01-01 00:00:00",
            "event": "GET /",
            "trace_id": "a" * 32,
            "span_id": "b" * 16,
            "kind": "Server",
            "status": "Ok",
            "duration_ms": 12.5,
            "event_id": "t1",
        }
    ],
}


def test_the_readme_has_sql_examples() -> None:
    """The README and docs/local.md show at least five SQL examples."""
    assert len(examples()) >= 5


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("example", examples())
def test_readme_sql_runs_on_both_engines(
    example: str, engine: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every SQL example of the README and docs runs on both engines, quietly."""
    with LocalServer(engine=engine) as local:
        for name, rows in ROWS.items():
            assert post(local, name, ndjson(*rows))[1]["quarantined_rows"] == 0
        assert cli_main(["sql", example, "--host", local.url, "--format", "json"]) == 0
        out, err = capsys.readouterr()
        assert out and not err, err
