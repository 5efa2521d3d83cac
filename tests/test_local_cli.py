"""The ``tinybird-export`` command: ``local`` and ``sql``, their help and their answers to bad
input, the newcomer's loop, and the package without chDB.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.local_helpers import ENGINES, EVENT, ndjson, needs_clickhouse, post
from tinybird_export.cli import main as cli_main
from tinybird_export.cli import query
from tinybird_export.local import LocalServer, spawn

ROOT = Path(__file__).resolve().parent.parent


def command(*args: str, timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("env", {**os.environ, "COLUMNS": "200"})
    result: subprocess.CompletedProcess[str] = subprocess.run(
        [sys.executable, "-m", "tinybird_export.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )
    return result


@pytest.fixture(params=ENGINES)
def local(request: pytest.FixtureRequest) -> Iterator[LocalServer]:
    with LocalServer(engine=str(request.param)) as server:
        post(server, "simple_events", ndjson(EVENT, {**EVENT, "event": "click"}))
        yield server


class TestHelp:
    def test_top_level_help_and_version(self) -> None:
        """tinybird-export --help names its commands; --version prints it."""
        done = command("--help")
        assert done.returncode == 0 and "local" in done.stdout and "sql" in done.stdout
        done = command("--version")
        assert done.returncode == 0 and done.stdout.startswith("tinybird-export ")
        done = command("nonsense")
        assert done.returncode == 2 and "invalid choice" in done.stderr

    def test_every_option_has_help_and_default(self) -> None:
        """Every option of local says what it does and its default."""
        local = command("local", "--help").stdout
        for option in ("--host", "--port", "--engine", "--data", "--datasources", "--strict"):
            assert option in local
        assert "(default: 7181)" in local and "(default: auto)" in local
        assert "(default: 127.0.0.1)" in local
        sql = command("sql", "--help").stdout
        assert "(default: 100)" in sql and "(default: table)" in sql and "TINYBIRD_HOST" in sql


class TestSQLCommand:
    def test_formats(self, local: LocalServer, capsys: pytest.CaptureFixture[str]) -> None:
        """tinybird-export sql prints a table, JSON and CSV."""
        args = ["sql", "select event, count() c from simple_events group by event order by event"]
        args += ["--host", local.url]
        assert cli_main([*args, "--token", local.token]) == 0
        table = capsys.readouterr().out
        assert "| event     | c |" in table and "| page_view | 1 |" in table
        assert cli_main([*args, "--format", "json"]) == 0  # token from GET /tokens
        assert capsys.readouterr().out == '{"event":"click","c":1}\n{"event":"page_view","c":1}\n'
        assert cli_main([*args, "--format", "csv"]) == 0
        assert capsys.readouterr().out.splitlines() == ["event,c", "click,1", "page_view,1"]

    def test_rows_cut_at_the_limit_are_announced(
        self, local: LocalServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Rows cut at --rows-limit are announced on stderr."""
        args = ["sql", "select event from simple_events", "--host", local.url, "--format", "json"]
        assert cli_main([*args, "--rows-limit", "1"]) == 0
        out, err = capsys.readouterr()
        assert len(out.splitlines()) == 1 and "first 1 rows" in err and "--rows-limit" in err
        assert cli_main([*args, "--rows-limit", "2"]) == 0
        assert capsys.readouterr().err == ""

    def test_unknown_table_lists_the_data_sources(
        self, local: LocalServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An unknown table's error lists the data sources there are."""
        assert cli_main(["sql", "select * from nope", "--host", local.url]) == 1
        err = capsys.readouterr().err
        assert "nope" in err and "simple_events" in err and "app_logs" in err

    def test_show_tables_and_describe_as_typed(
        self, local: LocalServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Not SELECTs: sent as they are, not inside tb sql's subquery (a syntax error)."""
        assert cli_main(["sql", "show tables", "--host", local.url]) == 0
        out = capsys.readouterr().out
        assert "| simple_events " in out and "| app_logs " in out
        assert cli_main(["sql", "describe simple_events;", "--host", local.url]) == 0
        out = capsys.readouterr().out
        assert "| name " in out and "| type " in out
        assert "| session_id " in out and "| DEFAULT " in out
        assert cli_main(["sql", "desc nothing_here", "--host", local.url]) == 1
        assert "simple_events" in capsys.readouterr().err  # the data sources there are

    def test_multi_line_values_keep_the_table_whole(
        self, local: LocalServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A traceback spans lines inside its column; tabs do not shift the columns."""
        traceback = "Traceback (most recent call last):\n  File \"x.py\", line 1\nKeyError: 'card'"
        row = {**EVENT, "event_id": "1", "level": "ERROR", "logger": "shop"}
        row["exception"] = traceback
        assert post(local, "app_logs", ndjson(row, {**row, "exception": "\tone line"}))[0] == 202
        args = ["sql", "select level, exception from app_logs order by exception", "--host"]
        assert cli_main([*args, local.url]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len({len(line) for line in lines}) == 1, lines  # every line as wide
        assert all(line[0] in "|-" and line[-1] in "|-" for line in lines), lines
        assert any("KeyError: 'card'" in line for line in lines)
        assert not any("\t" in line for line in lines)

    def test_no_server_says_how_to_start_one(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Without a server, sql says how to start one."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        assert cli_main(["sql", "select 1", "--host", f"http://127.0.0.1:{port}"]) == 1
        err = capsys.readouterr().err
        assert "no server answers" in err and "tinybird-export local" in err
        assert "TINYBIRD_HOST" in err


@needs_clickhouse
def test_a_write_through_sql_says_read_only(capsys: pytest.CaptureFixture[str]) -> None:
    """A write through tinybird-export sql says the SQL is read-only."""
    with LocalServer(engine="clickhouse") as local:
        assert cli_main(["sql", "select * from file('/etc/hostname')", "--host", local.url]) == 1
        assert "read-only" in capsys.readouterr().err


class TestLocalCommand:
    def test_port_in_use(self, tmp_path: Path) -> None:
        """A port in use is said, with what to do."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            data = tmp_path / "data"
            done = command("local", "--port", str(port), "--data", str(data))
        assert done.returncode == 2
        assert f"port {port}" in done.stderr and "--port" in done.stderr
        assert "7181" in done.stderr and "Tinybird Local" in done.stderr
        assert not data.exists()  # nothing created before the bind

    def test_bad_datasource_files(self, tmp_path: Path) -> None:
        """A bad .datasource file, a missing or empty folder: start-up stops, saying which."""
        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / "bad.datasource").write_text(
            "SCHEMA >\n    `a` String `json:$.a`,\n    `b` Strng `json:$.b`\n"
        )
        for engine in ("sqlite", "auto"):
            done = command(
                "local",
                "--port",
                "0",
                "--data",
                ":memory:",
                "--engine",
                engine,
                "--datasources",
                str(bad),
            )
            assert done.returncode == 2
            assert f"{bad / 'bad.datasource'}:3" in done.stderr and "'Strng'" in done.stderr
        missing = command("local", "--port", "0", "--datasources", str(tmp_path / "nope"))
        assert missing.returncode == 2 and "no such file or directory" in missing.stderr
        empty = tmp_path / "empty"
        empty.mkdir()
        done = command("local", "--port", "0", "--datasources", str(empty))
        assert done.returncode == 2 and "no .datasource files" in done.stderr
        (empty / "x.pipe").write_text("NODE n\n")
        done = command("local", "--port", "0", "--datasources", str(empty))
        assert done.returncode == 2 and "x.pipe" in done.stderr

    def test_banner_and_start_up(self, tmp_path: Path) -> None:
        """local prints its banner: URL, engine, data sources, the exports to copy."""
        started = time.monotonic()
        with subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tinybird_export.local",
                "--port",
                "0",
                "--data",
                str(tmp_path / "d"),
            ],
            stdout=subprocess.PIPE,
            text=True,
        ) as proc:
            try:
                assert proc.stdout is not None
                lines = [proc.stdout.readline() for _ in range(10)]
                startup = time.monotonic() - started
            finally:
                proc.terminate()
                proc.wait(10)
                proc.stdout.close()  # type: ignore[union-attr]
        banner = "".join(lines)
        # localhost: the name Tinybird's tb CLI takes for a local server.
        assert "serving the Events API at http://localhost:" in lines[0]
        url = lines[0].split(" at ")[1].strip()
        assert lines[1].startswith(f"  page:         {url}/#token=p.local.")
        assert "engine:" in banner and "strict mode:  off" in banner
        assert (
            "app_logs, logs, otel_logs, otel_metrics_exponential_histogram, otel_metrics_gauge, "
            "otel_metrics_histogram, otel_metrics_sum, otel_traces, simple_events, traces"
        ) in banner
        assert "requests:     one line each below" in banner
        assert lines[8] == f"export TINYBIRD_HOST={url}\n"
        assert lines[9].startswith("export TINYBIRD_TOKEN=p.local.")
        assert lines[1].endswith(f"#token={lines[9].split('=')[1]}")
        assert startup < 5  # includes interpreter start-up on a loaded machine (bench: < 2 s)

    @pytest.mark.timeout(120)
    @pytest.mark.parametrize("engine", ENGINES)
    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
    def test_a_stop_signal_keeps_what_was_acknowledged(
        self, engine: str, signum: signal.Signals, tmp_path: Path
    ) -> None:
        """docker stop, systemd and SpawnedServer.stop() send SIGTERM: the rows answered 202
        but still held by the engine's write buffer are stored before the process ends."""
        data = str(tmp_path / "data")
        server = spawn(data, "--engine", engine)
        try:
            rows = [{**EVENT, "event": f"e{i}"} for i in range(100)]
            assert post(server, "stopped_t", ndjson(*rows)) == (
                202,
                {"successful_rows": 100, "quarantined_rows": 0},
            )
            server.process.send_signal(signum)
            assert server.process.wait(60) == 0  # a graceful stop, as after Ctrl-C
        finally:
            server.stop()
        with spawn(data, "--engine", engine) as again:
            counted = query(again.url, again.token, "select count() n from stopped_t")
        assert counted["data"] == [{"n": 100}]


def test_the_newcomers_loop_quarantines_nothing(tmp_path: Path) -> None:
    """A fresh ``tinybird-export local``, the README's quickstart logging, then ``sql``."""
    quickstart = textwrap.dedent(
        """
        import logging.config

        logging.config.dictConfig(
            {
                "version": 1,
                "handlers": {
                    "tinybird": {"class": "tinybird_export.TinybirdHandler", "datasource": "app_logs"}
                },
                "root": {"handlers": ["tinybird"], "level": "INFO"},
            }
        )
        logging.getLogger("shop").info(
            "checkout", extra={"href": "https://shop.example/cart", "cart_id": 42}
        )
        logging.getLogger("shop").warning("slow", extra={"ms": 1.5, "tags": ["a"], "n": None})
        from tinybird_export import TinybirdEvents
        events = TinybirdEvents(datasource="simple_events")
        events.send({"href": "https://shop.example/", "event": "page_view"})
        assert events.flush(10) and events.stats().quarantined == 0
        handler = logging.getLogger().handlers[0]
        assert handler.flush(10) and handler.stats().quarantined == 0, handler.stats()
        print("flushed")
        """
    )
    with spawn(":memory:") as local:
        done = subprocess.run(
            [sys.executable, "-c", quickstart],
            env=local.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0 and "flushed" in done.stdout, done.stderr
        for table, count in (("app_logs", "2"), ("simple_events", "1")):
            out = command(
                "sql", f"select count() c from {table}", "--format", "csv", env=local.env()
            )
            assert out.returncode == 0 and out.stdout.splitlines() == ["c", count], out
        quarantine = command("sql", "select count() from app_logs_quarantine", env=local.env())
        assert quarantine.returncode == 1  # never created: nothing was quarantined


@pytest.mark.parametrize("engine", ENGINES)
def test_the_readmes_try_it_locally_runs_as_written(engine: str) -> None:
    """``examples/quickstart.py`` and the README's two ``sql`` lines, against a fresh server
    of each engine (SQLite is what a plain ``pip install`` gets)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Try it locally") :]
    section = section[: section.index("\n## ", 1)]
    queries = [
        line.removeprefix(".venv/bin/tinybird-export ")
        for line in section.splitlines()
        if line.startswith(".venv/bin/tinybird-export sql ")
    ]
    assert len(queries) == 2 and ".venv/bin/python examples/quickstart.py" in section
    with spawn(":memory:", "--engine", engine) as local:
        done = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "quickstart.py")],
            env=local.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0 and "acknowledged: True" in done.stdout, done
        assert "quarantined=0" in done.stdout and "dropped=0" in done.stdout, done.stdout
        levels = command(*shlex.split(queries[0])[0:2], env=local.env())
        assert levels.returncode == 0, levels
        assert "checkout" in levels.stdout and "42" in levels.stdout, levels.stdout
        assert "payment failed" in levels.stdout and "ERROR" in levels.stdout, levels.stdout
        counts = command(*shlex.split(queries[1]), env=local.env())
        assert counts.returncode == 0 and "page_view,1" in counts.stdout, counts


def test_without_chdb_the_sqlite_engine_serves(tmp_path: Path) -> None:
    """chDB is an extra: the package imports and ``--engine auto`` falls back to SQLite."""
    block = "import sys; sys.modules['chdb'] = None; "
    refused = subprocess.run(
        [
            sys.executable,
            "-c",
            block
            + "from tinybird_export.local import main; sys.exit(main(['--engine', 'clickhouse']))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2 and "pip install -e '.[local]'" in refused.stderr
    run = block + (
        "from tinybird_export.local import LocalServer; import urllib3, orjson\n"
        "with LocalServer(engine='auto') as s:\n"
        "    assert s.engine_name == 'sqlite'\n"
        "    r = urllib3.request('POST', s.url + '/v0/events?name=e', body=b'{\"a\":1}',"
        " headers={'Authorization': 'Bearer ' + s.token})\n"
        "    print(r.status, 'chdb' in sys.modules and sys.modules['chdb'] is not None)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", run], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "202 False", done.stderr


def test_env_of_spawned_server_has_no_token_in_repr() -> None:
    """A spawned server's repr and our environment never hold its token."""
    with spawn(":memory:", "--engine", "sqlite") as local:
        assert local.token not in repr(local)
        assert os.environ.get("TINYBIRD_TOKEN") != local.token


def test_the_banner_warns_when_other_machines_can_reach_the_server() -> None:
    """The banner warns when other machines can reach the server."""
    from tinybird_export.local._main import banner

    exposed = LocalServer(host="0.0.0.0")  # bound, never started: nothing is served
    try:
        said = banner(exposed, ":memory:")
        assert "warning:" in said and "anyone who can reach" in said
        assert "read and write this workspace" in said
        assert "GET /tokens answers this machine only (--allow-remote-tokens" in said
    finally:
        exposed.stop()
    allowed = LocalServer(host="0.0.0.0", allow_remote_tokens=True)
    try:
        assert "GET /tokens gives them the token" in banner(allowed, ":memory:")
    finally:
        allowed.stop()
    with LocalServer() as local:
        assert "warning:" not in banner(local, ":memory:")
