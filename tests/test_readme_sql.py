"""Every SQL example in the README and docs/local.md runs unchanged on the ClickHouse engine."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from tests.local_helpers import ndjson, needs_clickhouse, post
from tinybird_export.cli import main as cli_main
from tinybird_export.local import LocalServer

ROOT = Path(__file__).resolve().parent.parent
# The README and the local server's page, which hold the SQL examples.
README = "\n".join((ROOT / name).read_text() for name in ("README.md", "docs/local.md"))


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


@needs_clickhouse
@pytest.mark.parametrize("example", examples())
def test_readme_sql_runs_on_clickhouse(example: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every SQL example of the README and docs runs on ClickHouse, quietly."""
    with LocalServer(engine="clickhouse") as local:
        for name, rows in ROWS.items():
            assert post(local, name, ndjson(*rows))[1]["quarantined_rows"] == 0
        assert cli_main(["sql", example, "--host", local.url, "--format", "json"]) == 0
        out, err = capsys.readouterr()
        assert out and not err, err
