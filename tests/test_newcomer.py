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

import orjson
import pytest

from tests.helpers import ROOT, child_env, closed_port_url, run_python, wait_until
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

    @pytest.mark.timeout(90)
    def test_on_a_terminal_diagnostics_print_above_the_live_line(self) -> None:
        """On a terminal the progress line is rewritten in place; the package's diagnostics
        (stderr, from its sender thread) land on lines of their own, and "last error" leaves
        the line once sending recovers."""
        import pty
        import threading

        with EventsServer() as server:
            # Failing for about 3 s (past the first progress lines), then healthy.
            server.script(*[Reply(status=503, headers={"Retry-After": "1"})] * 3)
            controller, terminal = pty.openpty()
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("TINYBIRD_")},
                "TINYBIRD_HOST": server.url,
                "TINYBIRD_TOKEN": server.token or "",
            }
            screen: list[bytes] = []
            with subprocess.Popen(
                [
                    sys.executable,
                    str(Path(ROOT) / "examples" / "stream_events.py"),
                    "--duration",
                    "6",
                ],
                env=env,
                stdout=terminal,
                stderr=terminal,
                close_fds=True,
            ) as proc:
                os.close(terminal)
                reader = threading.Thread(target=read_terminal, args=(controller, screen))
                reader.start()
                assert proc.wait(60) == 0
                reader.join(10)
        lines = terminal_screen(b"".join(screen).decode())
        said = [line for line in lines if line.startswith("tinybird-export:")]
        assert any("answered 503" in line for line in said), lines
        assert any("answers again" in line for line in said), lines
        progress_parts = ("events/s", "requests/s", "sent)", "last error")
        mixed = [line for line in said if any(part in line for part in progress_parts)]
        mixed += [line for line in said if not line.endswith(".")]  # a sentence, whole
        mixed += [line for line in lines if "events/s" in line and "tinybird-export" in line]
        assert mixed == [], lines
        progress = [line for line in lines if "events/s" in line]
        assert progress and "last error" not in progress[-1], lines

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


def read_terminal(controller: int, into: list[bytes]) -> None:
    """Read a pseudo-terminal until its last writer has gone."""
    try:
        while chunk := os.read(controller, 65536):
            into.append(chunk)
    except OSError:  # EIO: the child closed the terminal
        pass
    finally:
        os.close(controller)


def terminal_screen(output: str) -> list[str]:
    """The lines a terminal shows for ``output``: a carriage return rewrites the line from
    its start (what it writes over is replaced, the rest stays), a line feed ends it."""
    lines: list[str] = []
    line: list[str] = []
    column = 0
    for char in output:
        if char == "\r":
            column = 0
        elif char == "\n":
            lines.append("".join(line).rstrip())
            line, column = [], 0
        else:
            if column < len(line):
                line[column] = char
            else:
                line.append(char)
            column += 1
    if line:
        lines.append("".join(line).rstrip())
    return lines


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


class TestNothingListening:
    """A wrong port, or a local server that is not running: refused connections. Waiting for
    them helps nobody, so each wait (a flush, a close, the exit drain) stops after about a
    second of refusals instead of its whole timeout, and says why."""

    @pytest.mark.timeout(60)
    def test_the_quickstart_on_a_wrong_port_ends_within_3_s(self) -> None:
        """A flush, a close and the exit each stop after about a second of refusals, and say why."""
        env = {**os.environ, "TINYBIRD_HOST": closed_port_url(), "TINYBIRD_TOKEN": "t"}
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, str(Path(ROOT) / "examples" / "quickstart.py")],
            env=env,
            capture_output=True,
            text=True,
            timeout=40,
            check=False,
        )
        took = time.monotonic() - started
        # A flush(5), a close (flush_timeout 5 s) and the exit budget (5 s): 15 s before.
        assert took < 3 + 1, (took, done.stderr)  # + the interpreter's start and exit
        assert "acknowledged: False" in done.stdout, done.stdout
        assert "nothing accepts connections there" in done.stderr
        exit_line = [line for line in done.stderr.splitlines() if "at exit" in line]
        assert len(exit_line) == 1, done.stderr
        assert "2 event(s) not delivered at exit" in exit_line[0]
        assert "not waited out: nothing accepts connections at http://127.0.0.1:" in exit_line[0]

    def test_a_flush_that_gave_up_keeps_the_events_for_when_the_server_comes(
        self, logger: logging.Logger
    ) -> None:
        """A flush that gave up dropped nothing: the next flush, once a server listens, delivers."""
        url = closed_port_url()
        handler = TinybirdHandler(datasource="late", host=url, token="t", flush_interval=0.05)
        try:
            logger.addHandler(handler)
            logger.info("waiting for the server")
            started = time.monotonic()
            assert handler.flush(10) is False
            assert time.monotonic() - started < 3
            assert handler.stats().queued == 1 and handler.stats().dropped == 0
            with EventsServer(port=int(url.rpartition(":")[2]), token="t") as late:
                assert handler.flush(15)  # the next attempt (backoff under 2 s) is answered
                assert [e["event"] for e in late.events("late")] == ["waiting for the server"]
        finally:
            handler.close()

    def test_only_refusals_in_a_row_for_long_enough_and_during_the_wait_count(self) -> None:
        """A blip, an answer or another kind of failure does not make a host 'nothing listening'."""
        from tinybird_export._retry import REFUSED_GIVE_UP, Refusals

        refusals = Refusals()
        refusals.note(None, "refused", 100.0)
        refusals.note(None, "refused", 100.4)
        assert refusals.lasting() is None  # a blip: a server restarting
        refusals.note(None, "refused", 100.0 + REFUSED_GIVE_UP)
        assert refusals.lasting() == REFUSED_GIVE_UP
        assert refusals.lasting(since=100.5) == REFUSED_GIVE_UP  # refused during this wait
        assert refusals.lasting(since=101.0) is None  # not yet: retry first
        refusals.note(202, "", 102.0)  # an answer: the host is back
        assert refusals.lasting() is None
        for at in (103.0, 104.0):
            refusals.note(None, "timeout", at)  # something is there, maybe overloaded
        assert refusals.lasting() is None


def readme_logging_dict(path: Path | None = None) -> dict[str, Any]:
    """The quickstart's ``dictConfig`` argument: the README's first block (or a script's)."""
    import ast

    text = (path or Path(ROOT) / "README.md").read_text()
    if path is None:
        text = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    call = next(
        node
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "dictConfig"
    )
    return ast.literal_eval(call.args[0])  # type: ignore[no-any-return]


DJANGO_SETTINGS = """
SECRET_KEY = "test"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
ROOT_URLCONF = "quickshop.urls"
LOGGING = {logging!r}  # the README's quickstart dict, as its text says
"""
DJANGO_URLS = """
from django.urls import path

def boom(request):
    raise RuntimeError("kaboom")

urlpatterns = [path("boom", boom)]
"""


class TestQuickstartLogging:
    """The quickstart's ``dictConfig`` keeps the loggers made before it, and the console."""

    def test_the_example_script_has_the_readmes_dict(self) -> None:
        """examples/quickstart.py configures logging with the README's dict, which keeps loggers."""
        quickstart = Path(ROOT) / "examples" / "quickstart.py"
        assert readme_logging_dict(quickstart) == readme_logging_dict()
        assert readme_logging_dict()["disable_existing_loggers"] is False

    def test_as_djangos_logging_a_500_keeps_its_internal_server_error_record(
        self, server: EventsServer, tmp_path: Path
    ) -> None:
        """Django configures its own loggers (``django.request``) before it applies
        ``LOGGING``: with ``disable_existing_loggers`` left true, a 500's record and its
        traceback would reach neither Tinybird nor the console."""
        pytest.importorskip("django")
        (tmp_path / "quickshop").mkdir()
        (tmp_path / "quickshop" / "__init__.py").write_text("")
        settings = DJANGO_SETTINGS.format(logging=readme_logging_dict())
        (tmp_path / "quickshop" / "settings.py").write_text(settings)
        (tmp_path / "quickshop" / "urls.py").write_text(DJANGO_URLS)
        result = run_python(
            f"""
            import logging, os, sys
            sys.path.insert(0, {str(tmp_path)!r})
            os.environ["DJANGO_SETTINGS_MODULE"] = "quickshop.settings"
            import django
            django.setup()
            from django.test import Client
            assert Client(raise_request_exception=False).get("/boom").status_code == 500
            from tinybird_export import TinybirdHandler
            handler = next(
                h for h in logging.getLogger().handlers if isinstance(h, TinybirdHandler))
            print(handler.flush(20))
            """,
            child_env(server),
        )
        assert result.stdout.strip() == "True", result.stderr
        (error,) = [e for e in server.events("app_logs") if e["logger"] == "django.request"]
        assert error["event"] == "Internal Server Error: /boom"
        assert "RuntimeError: kaboom" in error["exception"]
        assert "Internal Server Error: /boom" in result.stderr  # and on the console
        assert "RuntimeError: kaboom" in result.stderr

    @pytest.mark.timeout(90)
    def test_under_uvicorns_command_line_its_lines_stay_on_the_terminal(
        self, server: EventsServer, tmp_path: Path
    ) -> None:
        """uvicorn's command line configures its loggers, then imports the app, whose
        ``dictConfig`` runs then: its start-up and shutdown lines must still print."""
        from tests.test_asgi import stop, uvicorn

        (tmp_path / "quick_app.py").write_text(
            "import logging, logging.config\n"
            f"logging.config.dictConfig({readme_logging_dict()!r})\n"
            "async def app(scope, receive, send):\n"
            "    if scope['type'] == 'http':\n"
            "        logging.getLogger('shop').info('served')\n"
            "        await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
            "        await send({'type': 'http.response.body', 'body': b'ok'})\n"
        )
        command = [sys.executable, "-m", "uvicorn", "quick_app:app", "--port", "0"]
        with uvicorn(command, child_env(server), tmp_path) as (proc, url):  # waits for its lines
            import urllib3

            assert urllib3.request("GET", f"{url}/", retries=False).status == 200
            code, err = stop(proc, signal.SIGINT)
        assert code in (0, 1), err
        assert "Application shutdown complete." in err  # uvicorn's own lines, still printed
        assert "served" in err  # the app's own record, on the quickstart's console handler
        assert [e["event"] for e in server.events("app_logs")] == ["served"]


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

    def test_werkzeugs_colours_stay_on_the_console(
        self, server: EventsServer, make_handler: Any
    ) -> None:
        """werkzeug's development server colours a 404's request line (ANSI codes in the
        message itself): the stored event has the line without them."""
        import threading

        import urllib3
        from werkzeug.serving import make_server
        from werkzeug.wrappers import Response

        handler = make_handler(datasource="access")
        log = logging.getLogger("werkzeug")
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        app = make_server("127.0.0.1", 0, Response("nothing here", status=404))
        serving = threading.Thread(target=app.serve_forever, kwargs={"poll_interval": 0.05})
        serving.start()
        try:
            answer = urllib3.request("GET", f"http://127.0.0.1:{app.port}/missing", retries=False)
            assert answer.status == 404
        finally:
            app.shutdown()
            serving.join(10)
            app.server_close()
            log.removeHandler(handler)
        assert handler.flush(10)
        (event,) = server.events("access")
        assert event["event"].endswith('"GET /missing HTTP/1.1" 404 -'), event["event"]
        assert "\x1b" not in orjson_dumps(event)

    def test_uvicorns_colour_copy_of_its_messages_is_not_stored(
        self, server: EventsServer, make_handler: Any
    ) -> None:
        """uvicorn logs its start-up lines with a ``color_message`` extra for its console."""
        import asyncio
        import threading

        import uvicorn

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                while (await receive())["type"] != "lifespan.shutdown":
                    await send({"type": "lifespan.startup.complete"})
                await send({"type": "lifespan.shutdown.complete"})

        handler = make_handler(datasource="uvicorn")
        log = logging.getLogger("uvicorn.error")
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="on")
        uvicorn_server = uvicorn.Server(config)
        running = threading.Thread(target=asyncio.run, args=(uvicorn_server.serve(),))
        running.start()
        try:
            assert wait_until(lambda: uvicorn_server.started, 20)
        finally:
            uvicorn_server.should_exit = True
            running.join(20)
            log.removeHandler(handler)
        assert handler.flush(10)
        events = server.events("uvicorn")
        started = [e for e in events if e["event"].startswith("Started server process")]
        assert started, [e["event"] for e in events]
        assert "color_message" not in started[0] and "color_message" not in started[0]["attributes"]
        assert "\x1b" not in orjson_dumps(events)


def orjson_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def readme_shell_commands() -> list[list[str]]:
    """The ``tinybird-export`` commands of the README's and the docs' shell blocks."""
    pages = [Path(ROOT) / "README.md", *sorted((Path(ROOT) / "docs").glob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
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
        """Every tinybird-export command and flag the README and the docs show exists."""
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

    @pytest.mark.timeout(120)
    def test_every_local_command_shown_starts_and_serves(self, tmp_path: Path) -> None:
        """Each ``tinybird-export local`` line of the README and docs, as written (port 7181
        made 0, the data directory a temporary one): it prints its URL and token."""
        shown = [words for words in readme_shell_commands() if words[:1] == ["local"]]
        assert len(shown) >= 3
        for words in shown:
            args = ["0" if w == "7181" else w for w in words]
            env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}
            with subprocess.Popen(
                [sys.executable, "-m", "tinybird_export.cli", *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ) as proc:
                assert proc.stdout is not None
                banner: list[str] = []
                while len(banner) < 40 and banner[-1:] != [""]:
                    banner.append(proc.stdout.readline())  # "" at its end, if it failed
                    if banner[-1].startswith("export TINYBIRD_TOKEN="):
                        break
                proc.terminate()
                proc.communicate(timeout=30)
            assert banner[0].startswith("tinybird-export local: serving"), (words, banner)
            assert any(line.startswith("export TINYBIRD_TOKEN=") for line in banner), banner

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
