"""The ASGI middleware: Starlette's test client in-process, real uvicorn in subprocesses
(SIGTERM, SIGINT, --workers, 500 concurrent requests), and the FastAPI example."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import by_logger, child_env, free_port, run_example, run_python
from tinybird_export import TinybirdHandler
from tinybird_export._context import ACCESS_LOGGER
from tinybird_export.asgi import RequestContextMiddleware
from tinybird_export.testing import EventsServer

Message = MutableMapping[str, Any]  # an ASGI scope or message
NO_MIDDLEWARE = "uvicorn serves this app without tinybird_export.asgi.RequestContextMiddleware"

starlette = pytest.importorskip("starlette")
from starlette.applications import Starlette  # noqa: E402
from starlette.background import BackgroundTask  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402
from starlette.routing import Mount, Route, WebSocketRoute  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocket  # noqa: E402


@pytest.fixture
def shop_and_access(server: EventsServer) -> Iterator[TinybirdHandler]:
    """One handler (flush_interval 60 s: only a flush sends) on the app's logger and the
    access logger, removed and closed afterwards.
    """
    handler = TinybirdHandler(
        datasource="asgi_logs", host=server.url, token=server.token, flush_interval=60
    )
    loggers = [logging.getLogger("shop"), logging.getLogger(ACCESS_LOGGER)]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    handler.close()


log = logging.getLogger("shop")


async def hello(request: Request) -> PlainTextResponse:
    log.info("said hello", extra={"visitor": request.path_params["name"]})
    return PlainTextResponse("hi", background=BackgroundTask(log.info, "after the response"))


def sync_report(request: Request) -> PlainTextResponse:  # Starlette runs it in a thread
    log.info("report built")
    return PlainTextResponse("report")


async def boom(request: Request) -> PlainTextResponse:
    raise RuntimeError("kaboom")


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    log.info("websocket message", extra={"text": await websocket.receive_text()})
    await websocket.close()


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    log.info("app shutting down")


def starlette_app(**options: Any) -> Starlette:
    app = Starlette(
        routes=[
            Route("/hello/{name}", hello),
            Route("/report", sync_report),
            Route("/boom", boom),
            WebSocketRoute("/ws", echo),
            Mount("/api", routes=[Route("/items/{item}", hello)]),
        ],
        lifespan=lifespan,
    )
    app.add_middleware(RequestContextMiddleware, **options)
    return app


async def run_lifespan(app: Any) -> list[str]:
    """Run ``app``'s lifespan as a server would (startup, then shutdown), logging one event
    in between; the types of the messages the app sent back."""
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        sent.append(message["type"])

    log.info("logged while serving")
    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    return sent


class TestStarletteTestClient:
    def test_every_event_carries_its_request_and_lifespan_shutdown_delivers(
        self, server: EventsServer, shop_and_access: TinybirdHandler
    ) -> None:
        """Each event carries its request, and lifespan shutdown delivers them."""
        app = starlette_app(request_id_header="X-Request-ID", access_events=True)
        with TestClient(app, raise_server_exceptions=False) as client:
            client.get("/hello/ada?reset_token=secret", headers={"X-Request-ID": "trusted-1"})
            client.get("/report", headers={"X-Request-ID": "trusted-2"})
            assert client.get("/boom").status_code == 500
            client.get("/api/items/42")
            client.get("/missing")
            with client.websocket_connect("/ws?t=1", headers={"X-Request-ID": "ws-1"}) as ws:
                ws.send_text("ping")
            assert server.events() == []  # flush_interval 60 s: nothing sent yet
        # Leaving the client ran lifespan shutdown: everything was delivered, no flush().
        events = server.events("asgi_logs")
        shop = {e["event"]: e for e in by_logger(events, "shop")}
        hello_event = shop["said hello"]
        assert hello_event["href"] == "http://testserver/hello/ada"  # no query string
        assert hello_event["request_id"] == "trusted-1"
        assert shop["after the response"]["request_id"] == "trusted-1"  # background task
        assert shop["report built"]["request_id"] == "trusted-2"  # sync endpoint, in a thread
        assert shop["report built"]["href"] == "http://testserver/report"
        websocket = shop["websocket message"]
        assert (websocket["href"], websocket["request_id"]) == ("ws://testserver/ws", "ws-1")
        assert shop["app shutting down"]["href"] == ""  # lifespan: no request
        access = {e["href"]: e for e in by_logger(events, ACCESS_LOGGER)}
        assert access["http://testserver/hello/ada"]["route"] == "/hello/{name}"
        assert access["http://testserver/hello/ada"]["status"] == 200
        assert access["http://testserver/hello/ada"]["request_id"] == "trusted-1"
        assert access["http://testserver/hello/ada"]["duration_ms"] >= 0
        assert access["http://testserver/boom"]["status"] == 500
        assert access["http://testserver/api/items/42"]["route"] == "/api/items/{item}"
        missing = access["http://testserver/missing"]
        assert (missing["status"], missing["route"]) == (404, "")
        assert missing["event"] == "GET http://testserver/missing 404"
        assert len(access) == 5  # HTTP requests only: no access event for the websocket

    def test_options_from_the_environment_and_arguments_win(
        self,
        server: EventsServer,
        shop_and_access: TinybirdHandler,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Options come from the environment, and arguments win over it."""
        monkeypatch.setenv("TINYBIRD_REQUEST_ID_HEADER", "X-Trace")
        monkeypatch.setenv("TINYBIRD_ACCESS_EVENTS", "true")
        monkeypatch.setenv("TINYBIRD_HREF_QUERY", "true")
        with TestClient(starlette_app()) as client:
            client.get("/hello/env?page=2", headers={"X-Trace": "from-env"})
        with TestClient(starlette_app(access_events=False, keep_query_string=False)) as client:
            client.get("/hello/arg?page=3", headers={"X-Trace": "still-env"})
        shop = by_logger(server.events(), "shop")
        env, arg = (e for e in shop if e["event"] == "said hello")
        assert env["href"] == "http://testserver/hello/env?page=2"
        assert env["request_id"] == "from-env"
        assert (arg["href"], arg["request_id"]) == ("http://testserver/hello/arg", "still-env")
        access = by_logger(server.events(), ACCESS_LOGGER)
        assert [e["href"] for e in access] == ["http://testserver/hello/env?page=2"]

    def test_random_request_ids_untrusted_headers_and_no_credentials(
        self, server: EventsServer, shop_and_access: TinybirdHandler
    ) -> None:
        """Untrusted ids are replaced, and a Host with credentials is not repeated."""
        with TestClient(starlette_app()) as client:  # no trusted header configured
            client.get("/hello/a", headers={"X-Request-ID": "not-trusted"})
            client.get("/hello/b", headers={"Host": "user:pass@evil.example"})
            client.get("/hello/c", headers={"Host": "shop.example:8443"})
        a, b, c = (e for e in by_logger(server.events(), "shop") if e["event"] == "said hello")
        assert len(a["request_id"]) == 32 and a["request_id"] != "not-trusted"
        assert a["request_id"] != b["request_id"]
        assert "pass" not in b["href"] and "@" not in b["href"]
        assert b["href"] == "http://testserver/hello/b"  # the server's own address instead
        assert c["href"] == "http://shop.example:8443/hello/c"

    def test_a_raw_asgi_app_without_any_framework(
        self, server: EventsServer, shop_and_access: TinybirdHandler
    ) -> None:
        """Pure ASGI: scopes built by hand, a lifespan the app ends without completing."""

        async def raw(scope: Message, receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                while (await receive())["type"] != "lifespan.shutdown":
                    await send({"type": "lifespan.startup.complete"})
                log.info("raw app stopping")
                return  # ends without lifespan.shutdown.complete: delivered all the same
            log.info("raw request")
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        app = RequestContextMiddleware(raw, access_events=True, shutdown_timeout=10)
        messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        sent: list[Message] = []

        async def serve() -> None:
            async def receive() -> Message:
                return messages.pop(0)

            async def send(message: Message) -> None:
                sent.append(message)

            scope = {
                "type": "http",
                "method": "POST",
                "path": "/odd?path#x",
                "query_string": b"a=1",
                "headers": [],
                "server": ("::1", 8000),
                "scheme": "https",
            }
            await app(scope, receive, send)
            await app({"type": "http", "headers": [(b"host", b"a b")]}, receive, send)
            unix = {"type": "http", "path": "/u", "headers": [], "server": ("/run/app.sock", None)}
            await app(unix, receive, send)
            await app({"type": "lifespan"}, receive, send)

        asyncio.run(serve())
        events = server.events()
        raw_requests = [e for e in by_logger(events, "shop") if e["event"] == "raw request"]
        assert raw_requests[0]["href"] == "https://[::1]:8000/odd%3Fpath%23x"
        assert raw_requests[1]["href"] == ""  # no path, no server: empty, never an error
        assert raw_requests[2]["href"] == "/u"  # a Unix socket, no Host header: the path
        assert [e["status"] for e in by_logger(events, ACCESS_LOGGER)] == [204, 204, 204]
        assert any(e["event"] == "raw app stopping" for e in events)

    def test_lifespan_shutdown_delivers_on_trio_too(
        self, server: EventsServer, shop_and_access: TinybirdHandler
    ) -> None:
        """hypercorn can serve ASGI on trio: the flush must not need asyncio."""
        trio = pytest.importorskip("trio")
        sent = trio.run(run_lifespan, RequestContextMiddleware(starlette_app()))
        assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
        events = [e["event"] for e in server.events()]
        assert events == ["logged while serving", "app shutting down"]

    @pytest.mark.parametrize("refusal", ["raises", "returns"])
    def test_an_app_that_refuses_lifespan_gets_it_answered_and_delivers(
        self, server: EventsServer, shop_and_access: TinybirdHandler, refusal: str
    ) -> None:
        """An app that raises on the lifespan scope before any message (Django) or returns
        at once: the middleware completes startup and shutdown itself, delivering first."""

        async def no_lifespan(scope: Message, receive: Any, send: Any) -> None:
            if refusal == "raises":
                raise ValueError("Django can only handle ASGI/HTTP connections, not lifespan.")

        sent = asyncio.run(run_lifespan(RequestContextMiddleware(no_lifespan)))
        assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
        assert [e["event"] for e in server.events()] == ["logged while serving"]

    def test_an_app_whose_startup_fails_keeps_its_failure(
        self, server: EventsServer, shop_and_access: TinybirdHandler
    ) -> None:
        """An app that received lifespan.startup and raised is not answered for: the
        server sees its error (uvicorn's --lifespan on then exits)."""

        async def failing(scope: Message, receive: Any, send: Any) -> None:
            await receive()
            raise RuntimeError("database unreachable")

        with pytest.raises(RuntimeError, match="database unreachable"):
            asyncio.run(run_lifespan(RequestContextMiddleware(failing)))

    @pytest.mark.parametrize("sigterm", ["default", "handled"])
    def test_without_any_lifespan_it_says_what_to_do_where_nothing_would_deliver(
        self, sigterm: str
    ) -> None:
        """No lifespan and no uvicorn: with SIGTERM at its default action (nothing would
        deliver) the first request says once what to do; a server that handles SIGTERM is
        trusted."""
        result = run_python(f"""
            import asyncio, signal
            from tinybird_export import TinybirdHandler
            from tinybird_export.asgi import RequestContextMiddleware
            handler = TinybirdHandler(datasource="x", token="t", exit_timeout=0)
            if {sigterm == "handled"}:
                signal.signal(signal.SIGTERM, lambda *_: None)

            async def app(scope, receive, send):
                await send({{"type": "http.response.start", "status": 204, "headers": []}})

            async def serve():
                async def send(message):
                    pass
                middleware = RequestContextMiddleware(app)
                for _ in range(3):
                    await middleware({{"type": "http", "path": "/", "headers": []}}, None, send)
            asyncio.run(serve())
        """)
        assert result.returncode == 0, result.stderr
        said = result.stderr.count("no ASGI lifespan reached RequestContextMiddleware")
        assert said == (1 if sigterm == "default" else 0), result.stderr
        if said:
            assert "install_sigterm_handler()" in result.stderr

    def test_a_uvicorn_it_cannot_hook_is_said(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A uvicorn whose shutdown is not what the package knows: said once, not silent."""
        from tinybird_export import _uvicorn

        class Frozen:  # no attribute can be set on it
            __slots__ = ()

            async def shutdown(self) -> None:
                pass

        server = type("Server", (), {"__module__": "uvicorn.server", "lifespan": Frozen()})()
        monkeypatch.setattr(_uvicorn, "serving_server", lambda: server)

        async def app(scope: Message, receive: Any, send: Any) -> None:
            pass

        middleware = RequestContextMiddleware(app)
        for _ in range(2):
            asyncio.run(middleware({"type": "http", "path": "/", "headers": []}, None, None))  # type: ignore[arg-type]
        err = capsys.readouterr().err
        assert err.count("this uvicorn's shutdown could not be hooked") == 1, err

    def test_invalid_shutdown_timeout_is_refused(self) -> None:
        """A negative shutdown_timeout is refused at construction."""
        with pytest.raises(ValueError, match="shutdown_timeout"):
            RequestContextMiddleware(starlette_app(), shutdown_timeout=-1)

    def test_importing_the_middleware_imports_no_framework(self) -> None:
        """Importing tinybird_export.asgi imports no framework."""
        result = run_python("""
            import sys
            import tinybird_export.asgi
            frameworks = ("starlette", "fastapi", "uvicorn", "anyio", "httpx", "celery")
            print(sorted(m for m in sys.modules if m.split(".")[0] in frameworks))
        """)
        assert result.stdout.strip() == "[]", result.stderr


# -- real uvicorn ------------------------------------------------------------------------

UVICORN_APP = """
import asyncio, logging, os
import tinybird_export
from tinybird_export import TinybirdHandler

log = logging.getLogger("shop")
log.setLevel(logging.INFO)
log.propagate = False
# flush_interval 60 s: nothing is sent before the process stops, so what arrives was
# delivered by the stop path under test.
handler = TinybirdHandler(flush_interval=60)
log.addHandler(handler)
for name in ("tinybird_export.access", "uvicorn.error"):
    logging.getLogger(name).addHandler(handler)
    logging.getLogger(name).setLevel(logging.INFO)
CONCURRENT = int(os.environ.get("CONCURRENT", "0"))
in_flight = 0
all_in = asyncio.Event()


async def raw_app(scope, receive, send):
    if scope["type"] == "lifespan" and os.environ.get("LIFESPAN") == "ignore":
        return  # an app that does not speak lifespan and says nothing (no error either)
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                log.info("shutdown handler ran")
                await send({"type": "lifespan.shutdown.complete"})
                return
    global in_flight
    number = scope["path"].rsplit("/", 1)[-1]
    log.info("request started", extra={"n": number})
    if CONCURRENT:  # every request waits until all are in flight: truly concurrent
        in_flight += 1
        if in_flight >= CONCURRENT:
            all_in.set()
        try:
            await asyncio.wait_for(all_in.wait(), 30)
        except asyncio.TimeoutError:
            log.info("barrier timed out", extra={"n": number})
    log.info("request finished", extra={"n": number})
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": number.encode()})


if os.environ.get("MIDDLEWARE") == "1":
    from tinybird_export.asgi import RequestContextMiddleware
    app = RequestContextMiddleware(raw_app, request_id_header="X-Request-ID", access_events=True)
else:
    app = raw_app

if __name__ == "__main__":  # uvicorn.run() from the app's own code
    import uvicorn
    if os.environ.get("SIGTERM_HANDLER") == "1":
        tinybird_export.install_sigterm_handler()  # before uvicorn.run(): under its handler
    # log_config=None: uvicorn's default config would close the handler created above
    # (dictConfig closes every existing handler); its lines go to stderr through this one.
    logging.getLogger("uvicorn.error").addHandler(logging.StreamHandler())
    uvicorn.run(app, host="127.0.0.1", port=0, log_config=None)
"""


@contextlib.contextmanager
def uvicorn(
    command: list[str], env: dict[str, str], cwd: Path, workers: int = 1, lifespan: bool = True
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A running uvicorn and its base URL, once each of its ``workers`` has completed
    lifespan startup (read from its stderr, so no polling; with ``lifespan`` false, once it
    listens); killed, with any worker, if the test did not stop it.
    """
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the workers too, for the kill below
    )
    try:
        assert proc.stderr is not None
        url = None
        started = 0
        seen = []
        for line in proc.stderr:  # EOF if uvicorn fails to start
            seen.append(line)
            found = re.search(r"running on (http://\S+)", line)
            url = url or (found.group(1) if found else None)
            started += "Application startup complete." in line
            if url and (started == workers or not lifespan):
                break
        else:
            pytest.fail("uvicorn did not start:\n" + "".join(seen))
        yield proc, url
    finally:
        if proc.poll() is None:  # the test failed before stopping it
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
        elif proc.stderr is not None:
            proc.stderr.close()


def stop(proc: subprocess.Popen[str], how: signal.Signals) -> tuple[int, str]:
    """Signal uvicorn and wait for it: its exit status and what it wrote on stderr."""
    proc.send_signal(how)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def uvicorn_cli(*options: str) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "uvicorn_app:app", *options]


def send_requests(url: str, count: int, path: str = "/r/") -> None:
    import urllib3

    pool = urllib3.PoolManager(retries=False, timeout=10)
    for i in range(count):
        response = pool.request(
            "GET", f"{url}{path}{i}?token=s", headers={"X-Request-ID": f"r-{i}"}
        )
        assert response.status == 200


class TestUvicorn:
    @pytest.fixture
    def app_dir(self, tmp_path: Path) -> Path:
        (tmp_path / "uvicorn_app.py").write_text(UVICORN_APP)
        return tmp_path

    @pytest.mark.parametrize(
        ("how", "workers", "expected_code"),
        # SIGINT: uvicorn re-raises it too, as KeyboardInterrupt: a normal exit, through
        # atexit (status 0; 1 with uvicorn 0.30, from click's "Aborted!"). --workers: the parent's.
        [(signal.SIGTERM, 1, {-15}), (signal.SIGINT, 1, {0, 1}), (signal.SIGTERM, 2, {0})],
        ids=["sigterm", "sigint", "sigterm-2-workers"],
    )
    def test_with_the_middleware_everything_logged_before_lifespan_shutdown_arrives(
        self,
        server: EventsServer,
        app_dir: Path,
        how: signal.Signals,
        workers: int,
        expected_code: set[int],
    ) -> None:
        """uvicorn re-raises SIGTERM after its graceful shutdown (the process dies by it,
        atexit never runs); the lifespan flush has delivered by then.
        """
        env = {**child_env(server), "MIDDLEWARE": "1"}
        # --workers: port 0 is not shared between the workers, so pick one.
        port = free_port() if workers > 1 else 0
        options = ["--port", str(port), "--workers", str(workers)]
        with uvicorn(uvicorn_cli(*options), env, app_dir, workers) as (proc, url):
            send_requests(url, 22)
            code, err = stop(proc, how)
        assert code in expected_code, err
        events = server.events()
        ids = sorted(f"r-{i}" for i in range(22))
        started = [e for e in events if e["event"] == "request started"]
        assert sorted(e["request_id"] for e in started) == ids
        for event in started:
            assert event["href"] == f"{url}/r/{event['n']}"  # its own request, no query
        access = by_logger(events, ACCESS_LOGGER)
        assert sorted(e["request_id"] for e in access) == ids
        shutdowns = [e for e in events if e["event"] == "shutdown handler ran"]
        assert len(shutdowns) == workers  # the app's own shutdown handler, in each worker
        assert len({e["event_id"] for e in events}) == len(events)
        # uvicorn's own lines: those before lifespan shutdown arrive; those after it only
        # when the process then exits normally (SIGINT), not when SIGTERM kills it.
        uvicorn_lines = [e["event"] for e in by_logger(events, "uvicorn.error")]
        assert uvicorn_lines.count("Waiting for application shutdown.") == workers
        late = uvicorn_lines.count("Application shutdown complete.")
        assert late == (workers if how == signal.SIGINT else 0), uvicorn_lines
        assert NO_MIDDLEWARE not in err

    def test_without_the_middleware_sigterm_loses_what_is_queued(
        self, server: EventsServer, app_dir: Path
    ) -> None:
        """The loss the middleware exists for, so that the README's claim is checked."""
        with uvicorn(uvicorn_cli("--port", "0"), child_env(server), app_dir) as (proc, url):
            send_requests(url, 22)
            code, err = stop(proc, signal.SIGTERM)
        assert code == -signal.SIGTERM, err
        assert server.events() == []  # killed by the re-raised signal: no exit drain
        assert err.count(NO_MIDDLEWARE) == 1, err  # said once, at the first request line

    @pytest.mark.parametrize(
        "options", [["--no-access-log"], ["--workers", "2"]], ids=["no-access-log", "2-workers"]
    )
    def test_without_the_middleware_it_says_what_to_add(
        self, server: EventsServer, app_dir: Path, options: list[str]
    ) -> None:
        """Without access lines, the check runs at uvicorn's "Shutting down" line; with
        --workers, each worker says it once."""
        workers = 2 if "--workers" in options else 1
        port = free_port() if workers > 1 else 0
        command = uvicorn_cli("--port", str(port), *options)
        with uvicorn(command, child_env(server), app_dir, workers) as (proc, url):
            send_requests(url, 3)
            _, err = stop(proc, signal.SIGTERM)
        assert err.count(NO_MIDDLEWARE) == workers, err
        assert "app.add_middleware(RequestContextMiddleware)" in err

    def test_install_sigterm_handler_before_uvicorn_run_drains_at_exit(
        self, server: EventsServer, app_dir: Path
    ) -> None:
        """uvicorn restores the handler it found and re-raises SIGTERM into it: ours, which
        exits normally (143) through the exit drain, so even uvicorn's last lines arrive.
        """
        command = [sys.executable, "uvicorn_app.py"]
        env = {**child_env(server), "SIGTERM_HANDLER": "1"}
        with uvicorn(command, env, app_dir) as (proc, url):
            send_requests(url, 22)
            code, err = stop(proc, signal.SIGTERM)
        assert code == 143, err
        events = [e["event"] for e in server.events()]
        assert events.count("request started") == 22
        assert "shutdown handler ran" in events
        assert events[-1].startswith("Finished server process")  # logged after lifespan

    @pytest.mark.parametrize(
        ("lifespan", "options"),
        [("ignore", []), ("off", ["--lifespan", "off"])],
        ids=["app-ignores-lifespan", "lifespan-off"],
    )
    def test_an_app_without_lifespan_delivers_at_sigterm(
        self, server: EventsServer, app_dir: Path, lifespan: str, options: list[str]
    ) -> None:
        """An app that does not speak lifespan (the middleware answers it), or uvicorn
        run with ``--lifespan off`` (the middleware delivers at uvicorn's shutdown): what
        was logged before SIGTERM arrives all the same.
        """
        env = {**child_env(server), "MIDDLEWARE": "1", "LIFESPAN": lifespan}
        command = uvicorn_cli("--port", "0", *options)
        with uvicorn(command, env, app_dir, lifespan=not options) as (proc, url):
            send_requests(url, 21)
            code, err = stop(proc, signal.SIGTERM)
        assert code == -signal.SIGTERM, err
        events = server.events()
        ids = sorted(f"r-{i}" for i in range(21))
        started = [e for e in events if e["event"] == "request started"]
        assert sorted(e["request_id"] for e in started) == ids, err
        assert sorted(e["request_id"] for e in by_logger(events, ACCESS_LOGGER)) == ids
        assert "tinybird-export" not in err  # nothing to say: it was delivered

    @pytest.mark.parametrize("options", [[], ["--lifespan", "off"]], ids=["auto", "lifespan-off"])
    def test_django_asgi_under_uvicorn_delivers_at_sigterm(
        self, server: EventsServer, tmp_path: Path, options: list[str]
    ) -> None:
        """Django's ASGI handler refuses the lifespan scope (it raises); wrapped in the
        middleware, its requests' events are delivered at SIGTERM (issue 24: 0 of 21).
        """
        pytest.importorskip("django")
        from tests.test_frameworks import DJANGO_PROJECT

        (tmp_path / "slow_settings.py").write_text(
            "from shop.settings import *  # noqa: F403\n"
            "# flush_interval 60 s: what arrives was delivered by the stop path under test\n"
            'LOGGING["handlers"]["tinybird"]["flush_interval"] = 60  # noqa: F405\n'
        )
        (tmp_path / "django_asgi.py").write_text(
            "import os, sys\n"
            f"sys.path.insert(0, {str(DJANGO_PROJECT)!r})\n"
            'os.environ["DJANGO_SETTINGS_MODULE"] = "slow_settings"\n'
            "from django.core.asgi import get_asgi_application\n"
            "from tinybird_export.asgi import RequestContextMiddleware\n"
            "application = RequestContextMiddleware(get_asgi_application())\n"
        )
        env = {**child_env(server), "TINYBIRD_DATASOURCE": "django_logs"}
        command = [sys.executable, "-m", "uvicorn", "django_asgi:application", "--port", "0"]
        with uvicorn([*command, *options], env, tmp_path, lifespan=not options) as (proc, url):
            send_requests(url, 21, path="/hello/")
            code, err = stop(proc, signal.SIGTERM)
        assert code == -signal.SIGTERM, err
        events = server.events("django_logs")
        said = [e for e in by_logger(events, "shop") if e["event"] == "said hello"]
        assert sorted(e["request_id"] for e in said) == sorted(f"r-{i}" for i in range(21)), err
        access = by_logger(events, ACCESS_LOGGER)
        assert sorted(e["status"] for e in access) == [200] * 21
        assert "tinybird-export" not in err

    def test_500_concurrent_requests_each_keep_their_own_context(
        self, server: EventsServer, app_dir: Path
    ) -> None:
        """500 concurrent requests under uvicorn each keep their own request context."""
        httpx = pytest.importorskip("httpx2")
        count = 500
        env = {**child_env(server), "MIDDLEWARE": "1", "CONCURRENT": str(count)}
        command = uvicorn_cli("--port", "0", "--no-access-log", "--backlog", "2048")

        async def all_at_once() -> list[int]:
            limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
            async with httpx.AsyncClient(limits=limits, timeout=60) as client:
                responses = await asyncio.gather(
                    *(
                        client.get(f"{url}/c/{i}?token=s", headers={"X-Request-ID": f"c-{i}"})
                        for i in range(count)
                    )
                )
            return [response.status_code for response in responses]

        with uvicorn(command, env, app_dir) as (proc, url):
            statuses = asyncio.run(all_at_once())
            code, err = stop(proc, signal.SIGTERM)
        assert statuses == [200] * count
        assert code == -signal.SIGTERM, err
        events = server.events()
        assert not [e for e in events if e["event"] == "barrier timed out"]  # all concurrent
        for name in ("request started", "request finished"):
            mine = [e for e in events if e["event"] == name]
            assert len(mine) == count
            for event in mine:  # interleaved on one loop: each with its own request's values
                assert event["request_id"] == f"c-{event['n']}"
                assert event["href"] == f"{url}/c/{event['n']}"
        access = by_logger(events, ACCESS_LOGGER)
        assert len(access) == count
        assert all(e["href"] == f"{url}/c/{e['request_id'][2:]}" for e in access)
        assert {e["status"] for e in access} == {200}


def test_fastapi_example_runs_against_the_local_server() -> None:
    """examples/fastapi_app.py runs as written, under uvicorn stopped by SIGTERM."""
    pytest.importorskip("fastapi")
    result = run_example("fastapi_app.py")
    assert result.returncode == 0, result.stderr
    assert "uvicorn ended with -15" in result.stdout
    lines = result.stdout.splitlines()
    assert any("'said hello'" in line and "'request_id': 'grace'" in line for line in lines)
    assert any("'report built'" in line for line in lines)  # the sync endpoint
    assert any("GET /hello/{name} 200" in line for line in lines)  # an access event
    assert "token=secret" not in result.stdout
    assert lines[-1] == "{'logger': 'shop', 'event': 'shop stopping', 'href': '', 'request_id': ''}"
