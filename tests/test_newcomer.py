"""The first ten minutes: the main job at a terminal (Ctrl-C included), problems said when
they happen, hosts checked at construction, query strings kept out of access lines, and a
README whose commands exist."""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, closed_port_url
from tinybird_export import TinybirdHandler
from tinybird_export.testing import EventsServer, Reply


class TestMainJobAtATerminal:
    @pytest.mark.timeout(90)
    def test_ctrl_c_prints_the_summary_within_2_s_and_exits_0(self) -> None:
        """Ctrl-C on the main job prints its summary within 2 s, and exits 0."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TINYBIRD_")}
        with subprocess.Popen(
            [sys.executable, str(Path(ROOT) / "examples" / "stream_events.py")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, as a terminal's job is
        ) as proc:
            assert proc.stdout is not None
            assert "streaming to an embedded local Events API" in proc.stdout.readline()
            assert re.match(
                r"watch the events arrive: http://localhost:\d+/#token=p\.local\.",
                proc.stdout.readline(),
            )
            line = proc.stdout.readline()  # not a terminal: a progress line every few seconds
            assert "events/s" in line and "\r" not in line
            interrupted = time.monotonic()
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: the whole process group
            out, err = proc.communicate(timeout=30)
            took = time.monotonic() - interrupted
        assert proc.returncode == 0, err
        assert took < 2 + 1, took  # the summary within 2 s (+ the interpreter's exit)
        count = re.search(r"select count\(\) from simple_events: (\d+)", out)
        assert count and int(count.group(1)) > 0, out

    def test_help_is_whole_sentences(self) -> None:
        """The main job's --help speaks in whole sentences."""
        result = subprocess.run(
            [sys.executable, str(Path(ROOT) / "examples" / "stream_events.py"), "--help"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0
        assert "as Tinybird's screencast does." in result.stdout
        assert "stops the server it started." in result.stdout


LONG_RUNNING = """
import logging, sys, time
from tinybird_export import TinybirdHandler
log = logging.getLogger("app"); log.propagate = False
log.addHandler(TinybirdHandler(flush_interval=0.2))
started = time.monotonic()
while time.monotonic() - started < float(sys.argv[1]):
    log.warning("working")
    time.sleep(0.05)  # an application going about its business
"""


class TestProblemsSaidWhenTheyHappen:
    @pytest.mark.parametrize(
        ("host", "expected"),
        [
            ("https://api.tinybird.invalid", "does not resolve"),
            ("refused", "nothing accepts connections there"),
        ],
    )
    def test_a_wrong_host_is_reported_within_5_s(
        self, tmp_path: Path, host: str, expected: str
    ) -> None:
        """A wrong host is said within 5 s, with what to fix."""
        script = tmp_path / "app.py"
        script.write_text(LONG_RUNNING)
        if host == "refused":
            host = closed_port_url()
        # The lookup of a .invalid name fails (the offline guard refuses it, as DNS would):
        # a deliberate attempt, not recorded as the suite leaving the machine.
        env = {
            **os.environ,
            "OFFLINE_GUARD_LOG": "",
            "TINYBIRD_HOST": host,
            "TINYBIRD_TOKEN": "t",
            "TINYBIRD_DATASOURCE": "x",
        }
        with subprocess.Popen(
            [sys.executable, str(script), "60"],
            env={**env, "TINYBIRD_ALLOW_HTTP": "true"},
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            assert proc.stderr is not None
            started = time.monotonic()
            first = proc.stderr.readline()  # the app still runs: no exit report yet
            said_after = time.monotonic() - started
            proc.kill()
            proc.communicate(timeout=10)
        assert expected in first, first
        assert said_after < 5, said_after

    def test_said_once_then_again_only_after_a_recovery(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger, capfd: Any
    ) -> None:
        """A failure is said once, and again only after a recovery was said."""
        server.script(*[Reply(status=503)] * 3)
        handler = make_handler(datasource="flaky", flush_interval=0.05)
        logger.addHandler(handler)
        logger.info("x")
        assert handler.flush(15)
        err = capfd.readouterr().err
        assert err.count("answered 503") == 1, err  # three failures, one line
        assert "answers again" in err
        server.script(Reply(status=503))
        logger.info("y")
        assert handler.flush(15)
        assert capfd.readouterr().err.count("answered 503") == 1  # a new failure, said again


class TestHostsAtConstruction:
    def test_a_host_with_a_path_is_refused_with_the_corrected_url(self) -> None:
        """A host with a path is refused with the URL to use instead."""
        with pytest.raises(ValueError, match="use 'http://127.0.0.1:7181'"):
            TinybirdHandler(datasource="x", token="t", host="http://127.0.0.1:7181/v0/events")

    def test_a_loopback_404_names_no_cloud_region(
        self, make_handler: Any, logger: logging.Logger, capfd: Any
    ) -> None:
        """A 404 from a local server names strict mode, not cloud regions."""
        with EventsServer() as other:
            other.respond(Reply(status=404))
            handler = make_handler(host=other.url, datasource="undeclared")
            logger.addHandler(handler)
            logger.info("x")
            handler.flush(5)
        err = capfd.readouterr().err
        assert "does not exist on this server" in err
        assert "api.us-east" not in err


class TestAccessLines:
    def test_django_and_werkzeug_request_lines_lose_their_query_string(
        self, server: EventsServer, make_handler: Any
    ) -> None:
        """Django's and werkzeug's request lines arrive without the query string."""
        from tinybird_export._context import strip_access_lines

        strip_access_lines("django.server", "werkzeug")  # what the integrations install
        handler = make_handler(datasource="access")
        for name in ("django.server", "werkzeug"):
            log = logging.getLogger(name)
            log.addHandler(handler)
            log.setLevel(logging.INFO)
        try:
            logging.getLogger("django.server").info(
                '"%s" %s %s', "GET /reset?token=s3cret HTTP/1.1", 200, 12
            )
            logging.getLogger("werkzeug").info(
                '%s - - "%s" %s -', "127.0.0.1", "GET /cb?code=s3cret HTTP/1.1", 302
            )
            assert handler.flush(10)
        finally:
            for name in ("django.server", "werkzeug"):
                logging.getLogger(name).removeHandler(handler)
        events = [e["event"] for e in server.events("access")]
        assert events == ['"GET /reset HTTP/1.1" 200 12', '127.0.0.1 - - "GET /cb HTTP/1.1" 302 -']


def readme_shell_commands() -> list[list[str]]:
    text = (Path(ROOT) / "README.md").read_text()
    commands = []
    for block in re.findall(r"```(?:sh|bash|console)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip().removeprefix("$ ")
            for part in re.split(r"&&|\|", line):
                words = shlex.split(part, comments=True)
                while words and "=" in words[0] and not words[0].startswith("-"):
                    words = words[1:]  # VAR=value prefixes
                if words and words[0].endswith("tinybird-export"):
                    commands.append(words[1:])
    return commands


class TestReadme:
    def test_every_tinybird_export_command_and_flag_it_uses_exists(self) -> None:
        """Every tinybird-export command and flag the README shows exists."""
        commands = readme_shell_commands()
        assert commands, "the README shows tinybird-export commands"
        helps: dict[str, str] = {}
        for words in commands:
            sub = words[0] if words and not words[0].startswith("-") else ""
            if sub not in helps:
                result = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "tinybird_export.cli",
                        *([sub] if sub else []),
                        "--help",
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                assert result.returncode == 0, (sub, result.stderr)
                helps[sub] = result.stdout
            for flag in (w.split("=")[0] for w in words if w.startswith("--")):
                assert flag in helps[sub], f"tinybird-export {sub} has no {flag}"

    def test_the_testing_server_prints_its_token(self) -> None:
        """python -m tinybird_export.testing prints its URL and token."""
        with subprocess.Popen(
            [sys.executable, "-m", "tinybird_export.testing", "--token", "abc"],
            stdout=subprocess.PIPE,
            text=True,
        ) as proc:
            assert proc.stdout is not None
            url, token = proc.stdout.readline(), proc.stdout.readline()
            proc.terminate()
        assert url.startswith("http://127.0.0.1:") and token.strip() == "token: abc"

    def test_the_readmes_pytest_example_passes_as_written(self, tmp_path: Path) -> None:
        """The "Testing your setup" block, run by pytest in a fresh process: the fixture
        comes from the package's entry point, with no conftest."""
        text = (Path(ROOT) / "README.md").read_text()
        blocks = [
            b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "tinybird_server" in b
        ]
        assert len(blocks) == 1
        (tmp_path / "test_readme_example.py").write_text(blocks[0])
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n0", str(tmp_path)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout
