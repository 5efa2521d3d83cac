"""Attacks on the package's two servers as they run on a developer's machine (``tinybird-export
local`` and ``testing.EventsServer``), at the HTTP level: DNS rebinding (a foreign Host),
requests from other origins (the token in the URL, a ``text/plain`` form POST), ``/tokens``,
and bodies meant to exhaust them (announced gigabytes, unauthenticated uploads, gzip bombs).
A real browser tries the cross-origin ones in tests/test_local_browser.py.
"""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import urllib3

from tests.local_helpers import ENGINES, EVENT, datasource_names, ndjson, sql
from tinybird_export import _http_guard
from tinybird_export.local import LocalServer, spawn
from tinybird_export.local import _http as local_http
from tinybird_export.testing import EventsServer

FOREIGN = "http://127.0.0.1:1"  # another origin: a page on another port of this machine


def port_of(url: str) -> int:
    return urllib.parse.urlsplit(url).port or 80


def call(
    url: str, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> urllib3.BaseHTTPResponse:
    return urllib3.request(
        method, f"{url}{path}", headers=headers or {}, body=body or None, retries=False, timeout=10
    )


def send_event(url: str, target: str, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
    """POST one event to ``/v0/events?<target>``."""
    return call(url, "POST", f"/v0/events?{target}", headers, ndjson(EVENT))


def exchange(url: str, head: str, body: bytes = b"", timeout: float = 10) -> tuple[bytes, float]:
    """Send a raw request (``head`` without its final blank line) and read the first
    answer's status line and headers; also how long that took.
    """
    parts = urllib.parse.urlsplit(url)
    started = time.monotonic()
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            piece = sock.recv(65536)
            if not piece:
                break
            answer += piece
    return answer, time.monotonic() - started


@pytest.fixture
def local() -> Iterator[LocalServer]:
    with LocalServer() as server:
        yield server


@pytest.fixture(params=["local", "events"])
def either(request: pytest.FixtureRequest) -> Iterator[LocalServer | EventsServer]:
    """Each of the package's servers: what a browser may do to one, it may not do to the other."""
    server: LocalServer | EventsServer
    server = LocalServer() if request.param == "local" else EventsServer()
    with server:
        yield server


def stored(server: LocalServer | EventsServer, name: str) -> int:
    if isinstance(server, EventsServer):
        return len(server.events(name))
    if name not in datasource_names(server):
        return 0
    count: int = sql(server, f"select count() n from {name}")["data"][0]["n"]
    return count


class TestDNSRebinding:
    """A page whose DNS name re-resolves to 127.0.0.1 is same-origin with the server: only the
    Host header tells its requests apart."""

    @pytest.mark.parametrize(
        "path", ["/tokens", "/v0/health", "/v0/sql?q=select+1", "/v0/datasources"]
    )
    def test_a_foreign_host_gets_403_saying_why(self, local: LocalServer, path: str) -> None:
        """Any route under a foreign Host is a 403 naming DNS rebinding, without the token."""
        host = f"attacker.example:{port_of(local.url)}"
        response = call(
            local.url, "GET", path, {"Host": host, "Authorization": f"Bearer {local.token}"}
        )
        assert response.status == 403
        error = orjson.loads(response.data)["error"]
        assert "DNS rebinding" in error and host in error
        assert local.token.encode() not in response.data

    def test_a_rebound_post_writes_nothing(self, either: LocalServer | EventsServer) -> None:
        """An event posted under a foreign Host, token included, is a 403 and stores nothing."""
        token = either.token or ""
        host = f"attacker.example:{port_of(either.url)}"
        headers = {"Host": host, "Authorization": f"Bearer {token}"}
        assert send_event(either.url, f"name=rebound&token={token}", headers).status == 403
        assert stored(either, "rebound") == 0

    @pytest.mark.parametrize(
        "host",
        [
            "localhost:{port}",
            "127.0.0.1:{port}",
            "[::1]:{port}",
            "LOCALHOST:{port}",
            "127.0.0.1",
            "10.0.0.5:{port}",
        ],
    )
    def test_its_own_names_and_ip_addresses_are_answered(
        self, local: LocalServer, host: str
    ) -> None:
        """Loopback names in any case, and IP addresses (no DNS to rebind), are answered."""
        response = call(
            local.url, "GET", "/v0/health", {"Host": host.format(port=port_of(local.url))}
        )
        assert response.status == 200

    def test_the_host_it_was_given_is_its_own(self) -> None:
        """A host name it was given is allowed, and a name that merely starts with one is not."""
        assert _http_guard.host_allowed("devbox.internal:7181", {"devbox.internal"})
        assert not _http_guard.host_allowed(
            "devbox.internal.attacker.example:7181", {"devbox.internal"}
        )
        assert not _http_guard.host_allowed("localhost.attacker.example:7181")
        assert not _http_guard.host_allowed("")


class TestCrossOrigin:
    """Another page can send requests (no preflight for a text/plain form or no-cors fetch):
    they must do nothing, whatever carries the token."""

    @pytest.mark.parametrize("engine", ENGINES)
    def test_a_form_post_with_the_token_writes_nothing(self, engine: str) -> None:
        """Posts from another site, port or null origin, token in the body: 403s, nothing stored."""
        with LocalServer(engine=engine) as server:
            for headers in (
                {"Origin": FOREIGN, "Content-Type": "text/plain"},
                {"Origin": "null", "Content-Type": "text/plain"},  # sandboxed frames, file://
                {"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"},
                {"Sec-Fetch-Site": "same-site", "Content-Type": "text/plain"},  # another port
            ):
                response = send_event(server.url, f"name=forged&token={server.token}", headers)
                assert response.status == 403, headers
                assert "cross-" in orjson.loads(response.data)["error"]
            assert "forged" not in datasource_names(server)

    @pytest.mark.parametrize("engine", ENGINES)
    def test_sql_from_another_origin_is_not_run(self, engine: str, tmp_path: Path) -> None:
        """SQL posted by another origin is a 403 and never runs: no file written."""
        target = tmp_path / "bashrc"
        query = f"SELECT 'echo pwned' INTO OUTFILE '{target}' FORMAT TSV"
        with LocalServer(engine=engine) as server:
            response = call(
                server.url,
                "POST",
                f"/v0/sql?token={server.token}",
                {"Origin": FOREIGN, "Content-Type": "application/x-www-form-urlencoded"},
                urllib.parse.urlencode({"q": query}).encode(),
            )
            assert response.status == 403
        assert not target.exists()

    def test_the_events_server_refuses_other_origins_too(self) -> None:
        """The test server refuses another origin's event with a 403 too, and records it."""
        with EventsServer() as server:
            headers = {"Origin": FOREIGN, "Authorization": f"Bearer {server.token}"}
            response = send_event(server.url, "name=forged", headers)
            assert response.status == 403 and server.events() == []
            assert server.requests[0].status == 403  # recorded, for tests that look

    def test_its_own_origin_is_allowed(self, either: LocalServer | EventsServer) -> None:
        """The page the server serves itself calls it with fetch (test_local_page.py)."""
        token = either.token or ""
        own = either.url
        headers = {
            "Origin": own,
            "Sec-Fetch-Site": "same-origin",
            "Authorization": f"Bearer {token}",
        }
        assert send_event(either.url, "name=own", headers).status == 202
        host = urllib.parse.urlsplit(own).hostname or ""  # localhost for the local server
        other = {"127.0.0.1": "localhost", "localhost": "127.0.0.1"}[host]
        other_name = own.replace(host, other)  # the same server, another origin
        headers = {"Origin": other_name, "Authorization": f"Bearer {token}"}
        assert send_event(either.url, "name=own", headers).status == 403

    def test_a_typed_url_is_allowed(self, local: LocalServer) -> None:
        """A URL typed in the address bar (Sec-Fetch-Site: none) is answered."""
        response = call(
            local.url,
            "GET",
            f"/v0/sql?q=select+1&token={local.token}",
            {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"},
        )
        assert response.status == 200

    def test_no_answer_invites_another_origin(self, local: LocalServer) -> None:
        """No answer, preflight or own-origin, carries an Access-Control-* header."""
        preflight = call(
            local.url,
            "OPTIONS",
            "/v0/sql",
            {"Origin": FOREIGN, "Access-Control-Request-Method": "POST"},
        )
        own = call(local.url, "GET", "/v0/health", {"Origin": local.url})
        for response in (preflight, own):
            assert not [h for h in response.headers if h.lower().startswith("access-control-")]


class TestTokens:
    def test_tinybirds_cli_gets_the_token(self, local: LocalServer) -> None:
        """``tb --local`` does ``requests.get("http://localhost:7181/tokens")``."""
        response = call(local.url, "GET", "/tokens", {"Host": f"localhost:{port_of(local.url)}"})
        assert orjson.loads(response.data)["workspace_admin_token"] == local.token

    @pytest.mark.parametrize(
        "headers",
        [
            {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"},
            {"Origin": "{url}", "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"},
        ],
    )
    def test_a_browser_never_gets_it(self, local: LocalServer, headers: dict[str, str]) -> None:
        """/tokens is a 403 without the token to a browser, navigating or fetching same-origin."""
        headers = {k: v.format(url=local.url) for k, v in headers.items()}
        response = call(local.url, "GET", "/tokens", headers)
        assert response.status == 403 and local.token.encode() not in response.data

    def test_other_machines_get_it_only_when_allowed(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """/tokens answers another machine only under --allow-remote-tokens, and else says so."""
        monkeypatch.setattr(local_http, "_loopback", lambda address: False)  # a remote client
        for allowed in (False, True):
            with LocalServer(allow_remote_tokens=allowed) as server:
                response = call(server.url, "GET", "/tokens")
                assert response.status == (200 if allowed else 403)
                assert (server.token.encode() in response.data) is allowed
                if not allowed:
                    assert "--allow-remote-tokens" in orjson.loads(response.data)["error"]

    def test_ipv4_mapped_loopback_is_this_machine(self) -> None:
        """::ffff:127.0.0.1 is loopback; a LAN address and nonsense are not."""
        assert local_http._loopback("::ffff:127.0.0.1") and local_http._loopback("127.0.0.1")
        assert not local_http._loopback("192.168.1.5") and not local_http._loopback("nonsense")


def _gzip_bomb(size: int) -> bytes:
    """``size`` zero bytes gzipped, built a MiB at a time (about 1 KiB per MiB)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\0" * (1 << 20)
    return b"".join(packer.compress(block) for _ in range(size >> 20)) + packer.flush()


def _peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return (
        int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
        / 1024
    )


@pytest.fixture(params=["local", "events"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, int]]:
    """Each server in its own process: its URL, token and pid (for its peak RSS)."""
    if request.param == "local":
        with spawn(":memory:", "--engine", "sqlite") as server:
            yield server.url, server.token, server.process.pid
        return
    with subprocess.Popen(
        [sys.executable, "-m", "tinybird_export.testing", "--token", "tok"],
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            yield process.stdout.readline().strip(), "tok", process.pid
        finally:
            process.terminate()
            process.wait(10)
            process.stdout.close()  # type: ignore[union-attr]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the peak RSS")
class TestBodies:
    """Nothing is read before the token and the size cap are checked, and nothing is inflated
    past the cap."""

    def test_an_announced_gigabyte_is_refused_unread(self, served: tuple[str, str, int]) -> None:
        """A 2 GiB Content-Length is a 413 at once, unread, and the server's memory stays flat."""
        url, token, pid = served
        head = f"POST /v0/events?name=big HTTP/1.1\nHost: 127.0.0.1\nAuthorization: Bearer {token}\nContent-Length: {2**31}"
        before = _peak_rss_mib(pid)
        answer, took = exchange(url, head, b"x" * 65536)  # the rest never comes
        assert answer.startswith(b"HTTP/1.1 413") and took < 1, (answer, took)
        assert _peak_rss_mib(pid) - before < 20
        assert call(url, "GET", "/nothing").status in (403, 404)  # still serving

    def test_no_token_no_body_read(self, served: tuple[str, str, int]) -> None:
        """A wrong token is a 403 before a byte of its body is read."""
        url, _, _ = served
        head = "POST /v0/events?name=x HTTP/1.1\nHost: 127.0.0.1\nAuthorization: Bearer wrong\nContent-Length: 5000000"
        answer, took = exchange(url, head)
        assert answer.startswith(b"HTTP/1.1 403") and took < 1, (answer, took)

    @pytest.mark.parametrize("path", ["/", "/tokens", "/v0/health", "/app.js"])
    def test_the_open_paths_read_no_body(self, path: str) -> None:
        """The paths answered without the token take no body: one announced is refused
        (403) unread (it was read, up to the 10 MB cap, by anyone, and a body that never came held
        a thread for the 60 s timeout).
        """
        with spawn(":memory:", "--engine", "sqlite") as server:
            head = f"POST {path} HTTP/1.1\nHost: 127.0.0.1\nContent-Length: 5000000"
            answer, took = exchange(server.url, head)
            assert answer.startswith(b"HTTP/1.1 403") and took < 1, (answer, took)

    def test_expect_100_continue_is_answered_before_the_body(
        self, served: tuple[str, str, int]
    ) -> None:
        """Expect: 100-continue is a 403 for a wrong token and a 100 for the right one."""
        url, token, _ = served
        head = "POST /v0/events?name=x HTTP/1.1\nHost: 127.0.0.1\nExpect: 100-continue\nContent-Length: 5000000"
        refused, _ = exchange(url, f"{head}\nAuthorization: Bearer wrong")
        assert refused.startswith(b"HTTP/1.1 403")
        welcome, _ = exchange(url, f"{head}\nAuthorization: Bearer {token}")
        assert welcome.startswith(b"HTTP/1.1 100")

    def test_a_chunked_body_gets_411(self, served: tuple[str, str, int]) -> None:
        """A chunked body gets a 411, as Tinybird wants a Content-Length."""
        url, token, _ = served
        head = f"POST /v0/events?name=x HTTP/1.1\nHost: 127.0.0.1\nAuthorization: Bearer {token}\nTransfer-Encoding: chunked"
        answer, _ = exchange(url, head, b"5\r\nhello\r\n0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 411")

    def test_a_gzip_bomb_is_413_quickly_in_bounded_memory(
        self, served: tuple[str, str, int]
    ) -> None:
        """2 GiB of gzipped zeros is a 413 within 2 s, and the server grows by under 100 MiB."""
        url, token, pid = served
        bomb = _gzip_bomb(2 << 30)  # 2 GiB of zeros in about 2 MiB
        assert len(bomb) < 10_000_000
        before = _peak_rss_mib(pid)
        started = time.monotonic()
        response = call(
            url,
            "POST",
            "/v0/events?name=bomb",
            {"Authorization": f"Bearer {token}", "Content-Encoding": "gzip"},
            bomb,
        )
        took = time.monotonic() - started
        grew = _peak_rss_mib(pid) - before
        assert response.status == 413 and "decompressed" in orjson.loads(response.data)["error"]
        assert took < 2 and grew < 100, (took, grew)

    def test_a_body_over_the_cap_still_gets_its_413(self) -> None:
        """The client is still sending when the 413 goes out: it must read the 413, not a
        reset (the package's shipper splits a batch on 413)."""
        with LocalServer(max_body_bytes=1000) as small, EventsServer(max_body_bytes=1000) as events:
            for url, token in ((small.url, small.token), (events.url, events.token)):
                response = call(
                    url,
                    "POST",
                    "/v0/events?name=x",
                    {"Authorization": f"Bearer {token}"},
                    os.urandom(3_000_000),
                )
                assert response.status == 413

    def test_gzip_members_and_padding_decode_as_gzip_does(self, either: Any) -> None:
        """Concatenated gzip members and zero padding decode as gzip does; 100 members are a 400."""
        headers = {"Authorization": f"Bearer {either.token or ''}", "Content-Encoding": "gzip"}
        body = gzip.compress(ndjson(EVENT)) + gzip.compress(ndjson(EVENT)) + b"\0" * 8
        many = gzip.compress(b"") * 100
        answers = [call(either.url, "POST", "/v0/events?name=m", headers, b) for b in (body, many)]
        assert answers[0].status == 202 and orjson.loads(answers[0].data)["successful_rows"] == 2
        assert answers[1].status == 400


class TestDataFiles:
    """The data files hold the token and the application's events: another user of the
    machine may not read them, as the ClickHouse engine's token file already could not be.
    """

    @pytest.mark.parametrize("engine", ENGINES)
    def test_a_new_data_path_is_its_owners_only(self, engine: str, tmp_path: Path) -> None:
        """A new data file (and its WAL files) is 0600, and the folder made for it 0700."""
        base = tmp_path / "share" / "tinybird-export"
        data = base / ("local.sqlite3" if engine == "sqlite" else "clickhouse")
        with LocalServer(data, engine=engine) as local:
            assert sql(local, "select 1 n")["data"] == [{"n": 1}]
            # The folder made for it (SQLite: the file's; ClickHouse: the data folder itself).
            paths = [data, *base.glob("local.sqlite3*")] + ([base] if engine == "sqlite" else [])
            loose = {
                str(p): oct(p.stat().st_mode & 0o777) for p in paths if p.stat().st_mode & 0o077
            }
            assert loose == {}, loose

    def test_an_sqlite_file_others_could_read_is_made_private(self, tmp_path: Path) -> None:
        """An SQLite file left readable by others (by an older version) is made 0600."""
        data = tmp_path / "local.sqlite3"
        with LocalServer(data, engine="sqlite"):
            pass
        data.chmod(0o644)
        with LocalServer(data, engine="sqlite") as local:
            assert data.stat().st_mode & 0o777 == 0o600
            assert sql(local, "select 1 n")["data"] == [{"n": 1}]
