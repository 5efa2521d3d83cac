"""Tinybird's own clients against ``tinybird-export local``: Classic ``tb`` (tinybird-cli),
Forward ``tb --local`` (tinybird) and tinybird-sdk, each from its own venv (their pins
conflict), against a real server subprocess on 127.0.0.1.

The venvs are ``.venv-tb-classic``, ``.venv-tb-forward`` and ``.venv-tb-sdk`` in the directory
``TINYBIRD_CLIENT_VENVS`` names (default: the repository root); ``.ci/run`` creates them. A
missing one skips its tests with the command that makes it. Nothing leaves the machine: the
clients run with ``tests/offline/sitecustomize.py`` on ``PYTHONPATH`` (it refuses every
non-loopback lookup and connection) and with their own opt-outs set.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3

from tinybird_export.local import SpawnedServer, spawn
from tinybird_export.local._engine import clickhouse_available

ROOT = Path(__file__).resolve().parent.parent
VENVS = Path(os.environ.get("TINYBIRD_CLIENT_VENVS") or ROOT)
GUARD = Path(__file__).resolve().parent / "offline"
PACKAGES = {"classic": "tinybird-cli", "forward": "tinybird", "sdk": "tinybird-sdk"}
ENGINE = "clickhouse" if clickhouse_available() else "sqlite"

pytestmark = pytest.mark.timeout(240)

SHOP = """\
DESCRIPTION >
    Checkout events, pushed by the client tests.

SCHEMA >
    `ts` DateTime64(3) `json:$.ts`,
    `user` String `json:$.user`,
    `amount` Float64 `json:$.amount` DEFAULT 0,
    `tags` Array(String) `json:$.tags[:]`

ENGINE "MergeTree"
ENGINE_SORTING_KEY "user, ts"
"""
ROWS = (
    '{"ts":"2024-01-01 00:00:00.000","user":"a","amount":1.5,"tags":["x"]}\n'
    '{"ts":"2024-01-02 00:00:00.000","user":"b","tags":[]}\n'
)


def venv_python(kind: str) -> Path:
    """The client venv's interpreter, or a skip saying how to make the venv."""
    venv = VENVS / f".venv-tb-{kind}"
    python = venv / "bin" / "python"
    if not python.exists():
        pytest.skip(
            f"{PACKAGES[kind]} is not installed in {venv} (create it with: python3 -m venv "
            f"{venv} && {venv}/bin/pip install {PACKAGES[kind]}; or set TINYBIRD_CLIENT_VENVS)"
        )
    return python


def parse_in_client(kind: str, code: str, files: list[Path], home: Path) -> list[Any]:
    """Run ``code`` (which prints one JSON line per file in ``sys.argv[1:]``) in the
    ``kind`` client's venv: the decoded lines, one per file (a skip without the venv).
    """
    result = subprocess.run(
        [venv_python(kind), "-c", code, *map(str, files)],
        env=client_env(home),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(files), result.stdout
    return [json.loads(line) for line in lines]


def client_env(home: Path, **extra: str) -> dict[str, str]:
    """A clean environment for a client: no inherited Tinybird settings, nothing sent out."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(GUARD),
        # Their start-up checks are expected to try the network: blocked, not recorded.
        "OFFLINE_GUARD_LOG": "",
        "PYTHONDONTWRITEBYTECODE": "1",
        "TB_VERSION_WARNING": "0",
        "TB_CLI_TELEMETRY_OPTOUT": "1",
        "DO_NOT_TRACK": "1",
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    env.update(extra)
    return env


def run(python: Path, args: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> str:
    """Run a client command; its output, or a failure with everything it printed."""
    tb = python.parent / "tb"
    command = [str(tb), *args] if args[0] != "-c" else [str(python), *args]
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(args[:3])} exited {done.returncode}:\n{output}"
    return output


@pytest.fixture
def server() -> Iterator[SpawnedServer]:
    with spawn(":memory:", "--engine", ENGINE) as local:
        yield local


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def test_clients_cannot_reach_outside(tmp_path: Path) -> None:
    """The guard is loaded by every client venv, and refuses public names and addresses."""
    pythons = [VENVS / f".venv-tb-{kind}" / "bin" / "python" for kind in PACKAGES]
    pythons = [p for p in pythons if p.exists()] or [Path(sys.executable)]
    # Checks the guard is in place before any call that would otherwise reach out.
    probe = textwrap.dedent(
        """
        import socket, sitecustomize
        assert socket.getaddrinfo is sitecustomize.getaddrinfo
        assert socket.socket.connect is sitecustomize.connect
        for target in ("api.tinybird.co", "pypi.org", "8.8.8.8"):
            try:
                socket.getaddrinfo(target, 443)
            except socket.gaierror as exc:
                assert "blocked in tests" in str(exc), exc
            else:
                raise SystemExit(f"{target} resolved")
        try:
            sitecustomize._checked(("203.0.113.7", 443))
        except ConnectionRefusedError as exc:
            assert "blocked in tests" in str(exc), exc
        else:
            raise SystemExit("a connection out would be allowed")
        socket.getaddrinfo("127.0.0.1", 80)
        print("guarded")
        """
    )
    for python in pythons:
        assert "guarded" in run(python, ["-c", probe], tmp_path, client_env(tmp_path))


class TestClassic:
    def test_auth_sql_ls_and_pull(self, server: SpawnedServer, home: Path, tmp_path: Path) -> None:
        """Classic tb: auth, sql, datasource ls and pull work locally."""
        python = venv_python("classic")
        env = client_env(home)
        project = tmp_path / "project"
        project.mkdir()
        auth = ["--host", server.url, "--token", server.token]
        out = run(python, [*auth, "sql", "select count() from simple_events"], project, env)
        assert "count()" in out and "0" in out
        out = run(python, ["auth", *auth], project, env)
        assert "Auth successful" in out and (project / ".tinyb").exists()
        listed = run(python, ["datasource", "ls"], project, env)
        assert "simple_events" in listed and "app_logs" in listed
        assert "_quarantine" not in listed
        run(python, ["pull", "--auto"], project, env)
        pulled = (project / "datasources" / "simple_events.datasource").read_text()
        assert "`event` LowCardinality(String) `json:$.event`" in pulled
        assert 'ENGINE_SORTING_KEY "event, timestamp"' in pulled
        assert not list(project.glob("**/*_quarantine*"))

    def test_push_append_truncate(self, server: SpawnedServer, home: Path, tmp_path: Path) -> None:
        """Classic tb: push, append and truncate a data source."""
        python = venv_python("classic")
        env = client_env(home)
        auth = ["--host", server.url, "--token", server.token]
        (tmp_path / "datasources").mkdir()
        (tmp_path / "datasources" / "shop.datasource").write_text(SHOP)
        (tmp_path / "rows.ndjson").write_text(ROWS)
        (tmp_path / "rows.csv").write_text('2024-01-03 00:00:00.000,c,2.5,"[""y""]"\n')
        assert "created" in run(
            python, [*auth, "push", "datasources/shop.datasource"], tmp_path, env
        )
        out = run(python, [*auth, "datasource", "append", "shop", "rows.ndjson"], tmp_path, env)
        assert "Appended 2 new rows" in out and "Total rows in shop: 2" in out
        out = run(python, [*auth, "datasource", "append", "shop", "rows.csv"], tmp_path, env)
        assert "Total rows in shop: 3" in out
        query = "select user, amount, length(tags) n from shop order by ts"
        out = run(python, [*auth, "sql", query, "--format", "json"], tmp_path, env)
        data = json.loads(out[out.index("{") :])["data"]
        assert data == [
            {"user": "a", "amount": 1.5, "n": 1},
            {"user": "b", "amount": 0, "n": 0},
            {"user": "c", "amount": 2.5, "n": 1},
        ]
        out = run(python, [*auth, "sql", query, "--format", "csv"], tmp_path, env)
        assert out.splitlines()[:2] == ['"user","amount","n"', '"a",1.5,1']
        run(python, [*auth, "datasource", "truncate", "shop", "--yes"], tmp_path, env)
        out = run(
            python, [*auth, "sql", "select count() c from shop", "--format", "json"], tmp_path, env
        )
        assert json.loads(out[out.index("{") :])["data"] == [{"c": 0}]

    def test_bad_token_is_refused(self, server: SpawnedServer, home: Path, tmp_path: Path) -> None:
        """Classic tb with a bad token is refused."""
        python = venv_python("classic")
        done = subprocess.run(
            [
                str(python.parent / "tb"),
                "--host",
                server.url,
                "--token",
                "wrong",
                "datasource",
                "ls",
            ],
            cwd=tmp_path,
            env=client_env(home),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode != 0
        assert "token" in (done.stdout + done.stderr).lower()


class TestForward:
    def _env(self, server: SpawnedServer, home: Path) -> dict[str, str]:
        host, _, port = server.url.removeprefix("http://").rpartition(":")
        return client_env(home, TB_LOCAL_HOST=host, TB_LOCAL_PORT=port)

    def test_build_deploy_append(self, server: SpawnedServer, home: Path, tmp_path: Path) -> None:
        """Forward tb: build, deploy and append against the local server."""
        python = venv_python("forward")
        env = self._env(server, home)
        (tmp_path / "datasources").mkdir()
        (tmp_path / "datasources" / "orders.datasource").write_text(SHOP)
        assert "orders.datasource created" in run(python, ["--local", "build"], tmp_path, env)
        out = run(python, ["--local", "deploy"], tmp_path, env)
        assert "is live" in out
        event = '{"ts":"2024-01-01 00:00:00.000","user":"z","amount":3,"tags":[]}'
        out = run(
            python, ["--local", "datasource", "append", "orders", "--events", event], tmp_path, env
        )
        assert "1 row appended" in out
        (tmp_path / "more.ndjson").write_text(ROWS)
        run(
            python,
            ["--local", "datasource", "append", "orders", "--file", "more.ndjson"],
            tmp_path,
            env,
        )
        query = "select user, amount from orders order by user"
        out = run(python, ["--output", "csv", "--local", "sql", query], tmp_path, env)
        assert out.splitlines()[:4] == ['"user","amount"', '"a",1.5', '"b",0', '"z",3']
        out = run(
            python,
            ["--output", "json", "--local", "sql", "select count() c from orders"],
            tmp_path,
            env,
        )
        assert '"c": 3' in out

    def test_a_pipe_file_fails_the_build_naming_it(
        self, server: SpawnedServer, home: Path, tmp_path: Path
    ) -> None:
        """Forward tb: a project with a pipe fails its build, naming it."""
        python = venv_python("forward")
        (tmp_path / "datasources").mkdir()
        (tmp_path / "pipes").mkdir()
        (tmp_path / "datasources" / "orders.datasource").write_text(SHOP)
        (tmp_path / "pipes" / "top.pipe").write_text("NODE n\nSQL >\n    select 1\n")
        done = subprocess.run(
            [str(python.parent / "tb"), "--local", "build"],
            cwd=tmp_path,
            env=self._env(server, home),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        output = done.stdout + done.stderr
        assert done.returncode != 0, output
        assert "pipes/top.pipe" in output and "not supported" in output


SDK_SCRIPT = """
import json, os, sys
from tinybird_sdk.api import local
from tinybird_sdk.client.base import TinybirdClient

url = sys.argv[1]
local.LOCAL_BASE_URL = url  # the SDK's local helpers assume localhost:7181
tokens = local.get_local_tokens()
name = local.get_local_workspace_name(None, os.getcwd())
workspace = local.get_or_create_local_workspace(tokens, name)["workspace"]
client = TinybirdClient({"base_url": url, "token": workspace.token})
out = {"workspace": workspace.name}
out["ingest"] = client.ingest("sdk_events", {"n": 1, "who": "a"})
out["batch"] = client.ingest_batch("sdk_events", [{"n": 2, "who": "b"}, {"n": 3, "who": "c"}])
with open("more.ndjson", "w") as f:
    f.write('{"n": 4, "who": "d"}\\n')
with open("more.csv", "w") as f:
    f.write('5,e\\n')
out["append_ndjson"] = client.datasources.append("sdk_events", {"file": "more.ndjson"})["datasource"]["name"]
out["append_csv"] = client.datasources.append("sdk_events", {"file": "more.csv"})["datasource"]["name"]
out["sql"] = client.sql("select n, who from sdk_events order by n FORMAT JSON")["data"]
client.datasources.delete("sdk_events", {"delete_condition": "n = 1"})
out["after_delete"] = client.sql("select count() c from sdk_events FORMAT JSON")["data"]
client.datasources.truncate("sdk_events")
out["after_truncate"] = client.sql("select count() c from sdk_events FORMAT JSON")["data"]
out["cleared"] = local.clear_local_workspace(tokens, name).name
print(json.dumps(out))
"""


def test_sdk(server: SpawnedServer, home: Path, tmp_path: Path) -> None:
    """tinybird-sdk appends and queries against the local server."""
    python = venv_python("sdk")
    out = run(python, ["-c", SDK_SCRIPT, server.url], tmp_path, client_env(home))
    result = json.loads(out.strip().splitlines()[-1])
    assert result["workspace"].startswith("Build_")
    assert result["ingest"] == {"successful_rows": 1, "quarantined_rows": 0}
    assert result["batch"] == {"successful_rows": 2, "quarantined_rows": 0}
    assert result["append_ndjson"] == result["append_csv"] == "sdk_events"
    assert result["sql"] == [{"n": n, "who": w} for n, w in zip(range(1, 6), "abcde", strict=True)]
    assert result["after_delete"] == [{"c": 4}]
    assert result["after_truncate"] == [{"c": 0}]


DEPLOY_DOC = ROOT / "docs" / "deploy.md"
# docs/deploy.md's rehearsal, line by line: each must be in the page as written, and runs here
# (the server on a free port rather than 7181, which tb --local is told with TB_LOCAL_PORT;
# .venv/bin/ is this interpreter's).
SERVER_LINE = (
    ".venv/bin/tinybird-export local --port 7181 --data :memory: --no-package-datasources --strict"
)
WRITE_LINE = ".venv/bin/tinybird-export datasources tinybird --include examples/datasources"
FORWARD_LINE = "cd tinybird && tb --local build && tb --local deploy"
CLASSIC_LINE = "cd tinybird && tb --host http://localhost:7181 --token $TINYBIRD_TOKEN push"
QUICKSTART_LINE = ".venv/bin/python examples/quickstart.py"
SQL_LINE = 'tb --local sql "select level, event from app_logs"'
DEPLOYED = 16  # the package's ten and the examples' six


class TestGoingToTinybird:
    """The folder ``tinybird-export datasources`` writes, deployed by Tinybird's own CLIs to
    a local server that declares nothing and refuses unknown data sources (a new Forward
    workspace), then the package's events into it."""

    @pytest.fixture
    def workspace(self) -> Iterator[SpawnedServer]:
        words = shlex.split(SERVER_LINE)
        assert words[1:6] == ["local", "--port", "7181", "--data", ":memory:"]
        with spawn(":memory:", "--engine", ENGINE, *words[6:]) as local:
            yield local

    @pytest.fixture
    def folder(self, tmp_path: Path) -> Path:
        """The project folder, written as the page says, from a directory that has the
        repository's ``examples/`` (not the repository: the command writes into the cwd)."""
        for line in (SERVER_LINE, WRITE_LINE, FORWARD_LINE, CLASSIC_LINE, QUICKSTART_LINE):
            assert line in DEPLOY_DOC.read_text(), line
        (tmp_path / "examples").symlink_to(ROOT / "examples")
        args = shlex.split(WRITE_LINE)[1:]
        done = subprocess.run(
            [sys.executable, "-m", "tinybird_export.cli", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert len(list((tmp_path / "tinybird" / "datasources").iterdir())) == DEPLOYED
        return tmp_path / "tinybird"

    def _quickstart_lands(self, workspace: SpawnedServer) -> None:
        done = subprocess.run(
            [sys.executable, str(ROOT / shlex.split(QUICKSTART_LINE)[1])],
            env={**os.environ, **workspace.env()},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "acknowledged: True" in done.stdout, done.stdout + done.stderr
        assert "dropped=0" in done.stdout and "quarantined=0" in done.stdout, done.stdout

    def test_forward_builds_and_deploys_it(
        self, workspace: SpawnedServer, folder: Path, home: Path
    ) -> None:
        """tb --local build and deploy of the folder, then the quickstart's events and tb --local sql."""
        python = venv_python("forward")
        host, _, port = workspace.url.removeprefix("http://").rpartition(":")
        env = client_env(home, TB_LOCAL_HOST=host, TB_LOCAL_PORT=port)
        before = urllib3.request(
            "POST",
            f"{workspace.url}/v0/events?name=app_logs",
            body=b"{}",
            headers={"Authorization": f"Bearer {workspace.token}"},
            retries=False,
        )
        assert before.status == 404  # nothing is deployed yet: strict, as Forward
        cd, build, deploy = (shlex.split(part) for part in FORWARD_LINE.split("&&"))
        assert cd == ["cd", "tinybird"] and build[0] == deploy[0] == "tb"
        built = run(python, build[1:], folder, env)
        for name in ("app_logs", "otel_metrics_sum", "flask_logs", "asyncio_events"):
            assert f"{name}.datasource created" in built, built
        assert "is live" in run(python, deploy[1:], folder, env)
        self._quickstart_lands(workspace)
        out = run(python, ["--output", "csv", *shlex.split(SQL_LINE)[1:]], folder, env)
        assert '"INFO","checkout"' in out and '"ERROR","payment failed"' in out, out

    def test_classic_pushes_it_with_its_token(
        self, workspace: SpawnedServer, folder: Path, home: Path
    ) -> None:
        """Classic tb push of the folder creates the data sources and the named token."""
        python = venv_python("classic")
        env = client_env(home)
        auth = ["--host", workspace.url, "--token", workspace.token]
        out = run(python, [*auth, "push"], folder, env)
        assert out.count("created") >= DEPLOYED, out
        assert "Token tinybird_export_append not found, creating one" in out, out
        assert "tinybird_export_append" in run(python, [*auth, "token", "ls"], folder, env)
        self._quickstart_lands(workspace)
