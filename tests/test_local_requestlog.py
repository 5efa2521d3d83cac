"""The local server's request log: one line per request, a burst summed once a second and
counted exactly, never a token, never a wait on the terminal; on for the command, off with
``--quiet`` and for ``spawn()``'s server.
"""

from __future__ import annotations

import io
import queue
import re
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from typing import IO

import pytest
import urllib3

from tests.helpers import wait_until
from tests.local_helpers import EVENT, ndjson, post
from tinybird_export.local import LocalServer, _requestlog, spawn
from tinybird_export.local._requestlog import RequestLog

LINE = re.compile(r"^\d\d:\d\d:\d\d  (\S+)\s+(\S+)\s+(\d{3})  (.*)$")


def requests_in(output: str) -> dict[tuple[str, str, str], int]:
    """How many requests the lines account for, by method, path and status."""
    counted: dict[tuple[str, str, str], int] = {}
    for line in output.splitlines():
        match = LINE.match(line)
        assert match, line
        method, path, status, outcome = match.groups()
        summed = re.match(r"×(\d+)", outcome)
        key = (method, path, status)
        counted[key] = counted.get(key, 0) + (int(summed.group(1)) if summed else 1)
    return counted


def test_a_request_is_one_line() -> None:
    """One request is one line: method, path, status, rows (quarantined), milliseconds."""
    stream = io.StringIO()
    log = RequestLog(stream)
    log.record("POST", "/v0/events", 202, rows=100, quarantined=3, seconds=0.0012)
    log.record("GET", "/v0/sql", 200, rows=1, seconds=0.0034)
    log.record("GET", "/", 200, seconds=0.0001)
    log.close()
    lines = stream.getvalue().splitlines()
    assert [LINE.match(line).groups() for line in lines] == [  # type: ignore[union-attr]
        ("POST", "/v0/events", "202", "100 rows (3 quarantined), 1.2 ms"),
        ("GET", "/v0/sql", "200", "1 row, 3.4 ms"),
        ("GET", "/", "200", "0.1 ms"),
    ]


def test_a_burst_is_summed_and_every_request_counted() -> None:
    """3,030 requests in a burst make a few lines, which count every one of them."""
    stream = io.StringIO()
    log = RequestLog(stream)
    started = time.monotonic()
    for number in range(3000):
        log.record("POST", "/v0/events", 202, rows=100, seconds=0.001)
        if number % 100 == 0:
            log.record("GET", "/v0/datasources", 200, seconds=0.002)
    windows = (time.monotonic() - started) / _requestlog.WINDOW + 2
    log.close()
    output = stream.getvalue()
    assert requests_in(output) == {
        ("POST", "/v0/events", "202"): 3000,
        ("GET", "/v0/datasources", "200"): 30,
    }
    assert len(output.splitlines()) <= 2 * windows + 2, output  # not 3,030 lines
    assert "300,000 rows" in output or "×" in output


def test_a_quiet_path_is_printed_again_one_line_a_request() -> None:
    """After a quiet window, a path that was summed gets a line per request again."""
    stream = io.StringIO()
    log = RequestLog(stream)
    for _ in range(5):
        log.record("POST", "/v0/events", 202, rows=1)
    with log._ready:
        log._roll(time.monotonic())  # the burst's window ends
        log._roll(time.monotonic() + 3 * _requestlog.WINDOW)  # a quiet window
    log.record("POST", "/v0/events", 202, rows=1)
    log.close()
    lines = stream.getvalue().splitlines()
    assert requests_in(stream.getvalue()) == {("POST", "/v0/events", "202"): 6}
    assert lines[-1].endswith("1 row, 0.0 ms"), lines


def test_a_line_holds_no_token_and_no_control_character() -> None:
    """The token is masked, control characters escaped, long paths cut."""
    stream = io.StringIO()
    log = RequestLog(stream, hide=["p.local.secret"])
    log.record("GET", "/v0/datasources/p.local.secret", 404)
    log.record("GET", "/\x1b[2J\x1b]0;owned\x07" + "x" * 500, 404)
    log.close()
    output = stream.getvalue()
    assert "p.local.secret" not in output and "/v0/datasources/<token>" in output
    assert "\x1b" not in output and "\x07" not in output and "\\x1b[2J" in output
    assert max(len(line) for line in output.splitlines()) < 200


class Stuck(io.StringIO):
    """A terminal that stopped reading (Ctrl-S, a full pipe): every write waits."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.release.wait(30)
        return super().write(text)


def test_a_terminal_that_stops_reading_holds_no_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream that blocks holds no request; the lines that did not fit are counted and said."""
    monkeypatch.setattr(_requestlog, "_PENDING", 5)
    stream = Stuck()
    log = RequestLog(stream)
    recorded = threading.Event()

    def many() -> None:
        for number in range(2000):
            log.record("GET", f"/v0/datasources/ds{number}", 404)
            if number % 40 == 0:
                with log._ready:
                    log._roll(time.monotonic())  # a new window: 20 more lines of their own
        recorded.set()

    threading.Thread(target=many, daemon=True).start()
    assert recorded.wait(20)  # never waited on the stream
    stream.release.set()
    log.close(5)
    output = stream.getvalue()
    assert "request lines not shown: the terminal did not keep up" in output
    assert len(output.splitlines()) <= 2 * 5 + 2


def test_a_closed_stream_ends_the_log_quietly() -> None:
    """A closed stream ends the log without an error, before or after close()."""
    stream = io.StringIO()
    log = RequestLog(stream)
    stream.close()
    log.record("GET", "/", 200)
    log.close(5)
    log.record("GET", "/", 200)  # after: nothing, no error


def test_the_server_logs_each_request_without_its_query_string() -> None:
    """The server logs each request (refusals too) without its query string, where the CLIs put the
    token."""
    stream = io.StringIO()
    with LocalServer(request_log=stream) as local:
        assert post(local, "simple_events", ndjson(EVENT, {"bad": 1}))[0] == 202
        urllib3.request("GET", f"{local.url}/v0/sql?q=select+1&token={local.token}")
        urllib3.request("GET", f"{local.url}/v0/sql?q=select+1&token=wrong")
        urllib3.request("GET", f"{local.url}/v0/sql", headers={"Origin": "http://evil.example"})
        token = local.token
    output = stream.getvalue()
    assert token not in output and "q=" not in output and "?" not in output
    lines = [LINE.match(line).groups() for line in output.splitlines()]  # type: ignore[union-attr]
    assert lines[0][:3] == ("POST", "/v0/events", "202")
    assert lines[0][3].startswith("1 row (1 quarantined), ")
    assert lines[1][:3] == ("GET", "/v0/sql", "200") and lines[1][3].startswith("1 row, ")
    assert {line[:3] for line in lines[2:]} == {("GET", "/v0/sql", "403")}
    assert requests_in(output)[("GET", "/v0/sql", "403")] == 2


def test_a_forged_method_cannot_write_to_the_terminal() -> None:
    """A request line's method is the client's text too: one made of escape sequences (sent
    with ``Expect: 100-continue``, which is answered before the method is looked at) is
    logged escaped, not written to the developer's terminal as commands.
    """
    stream = io.StringIO()
    with LocalServer(request_log=stream) as local:
        port = urllib.parse.urlsplit(local.url).port
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        client.sendall(
            b"P\x1b]0;owned\x07\x1b[2J /v0/events HTTP/1.1\r\nHost: localhost\r\n"
            b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        answer = b""
        while piece := client.recv(65536):  # the whole answer: the server then closes
            answer += piece
        client.close()
        assert answer.startswith(b"HTTP/1.1 403"), answer
        # The line is logged once the answer is sent, by the log's own thread.
        assert wait_until(lambda: "/v0/events" in stream.getvalue())
    output = stream.getvalue()
    assert "\x1b" not in output and "\x07" not in output, output
    assert "P\\x1b]0;owned\\x07\\x1b[2J" in output


class Lines:
    """A subprocess's stdout, a line at a time, each wait with a deadline."""

    def __init__(self, stream: IO[str] | None) -> None:
        assert stream is not None
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put("")

    def next(self, timeout: float) -> str:
        """The next line, or "" at the end or after ``timeout`` seconds."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return ""

    def rest(self) -> str:
        """What the process printed until it ended (call once it has)."""
        self._reader.join(10)
        return "".join(iter(self._lines.get_nowait, ""))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("quiet", [False, True])
def test_the_command_prints_a_line_per_request_unless_quiet(quiet: bool) -> None:
    """tinybird-export local prints a line per request after its banner, and none with --quiet."""
    command = [sys.executable, "-m", "tinybird_export.local", "--port", "0", "--data", ":memory:"]
    with subprocess.Popen(
        [*command, *(["--quiet"] if quiet else [])], stdout=subprocess.PIPE, text=True
    ) as server:
        lines = Lines(server.stdout)
        try:
            banner = [lines.next(30)]
            while banner[-1] and not banner[-1].startswith("export TINYBIRD_TOKEN="):
                banner.append(lines.next(30))
            url = banner[-2].strip().split("=", 1)[1]
            token = banner[-1].strip().split("=", 1)[1]
            said = "not printed" if quiet else "one line each below"
            assert f"requests:     {said}" in "".join(banner)
            answer = urllib3.request("GET", f"{url}/v0/sql?q=select+1&token={token}")
            assert answer.status == 200
            line = lines.next(1 if quiet else 20)
        finally:
            server.terminate()
            server.wait(10)
        rest = lines.rest()
    if quiet:
        assert line == "" and rest == ""
    else:
        assert LINE.match(line.rstrip("\n")) and " GET    /v0/sql " in line, line
        assert "1 row, " in line and token not in line + rest


def test_spawned_servers_are_quiet() -> None:
    """spawn()'s stdout is a pipe nobody reads after the banner: a line per request would
    fill it, and stop the server."""
    with spawn() as server:
        for _ in range(300):  # ~20 kB of lines, were they printed
            status, _ = post(server, "simple_events", ndjson(EVENT))
            assert status == 202
        assert server.process.stdout is not None
        ready, _, _ = select.select([server.process.stdout], [], [], 0.2)
        assert not ready
    assert server.url.startswith("http://localhost:")
    assert server.page_url == f"{server.url}/#token={server.token}"
