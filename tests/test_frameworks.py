"""Django, Flask, gunicorn, structlog and loguru, with the real frameworks and servers."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import urllib3

from tests.helpers import ROOT, by_logger, child_env, free_port, run_example, run_python
from tinybird_export import TinybirdHandler
from tinybird_export.testing import EventsServer

DJANGO_PROJECT = Path(ROOT) / "examples" / "django_project"


class TestDjango:
    def test_wsgi_and_asgi_requests(self, server: EventsServer) -> None:
        """Django requests, WSGI and ASGI, carry their href and request_id."""
        pytest.importorskip("django")
        result = run_python(
            f"""
            import asyncio, logging, os, sys
            sys.path.insert(0, {str(DJANGO_PROJECT)!r})
            os.environ["DJANGO_SETTINGS_MODULE"] = "shop.settings"
            import django
            django.setup()
            from django.test import AsyncClient, Client
            client = Client(raise_request_exception=False)
            client.get("/hello/ada?reset_token=secret", headers={{"X-Request-ID": "trusted-1"}})
            client.get("/hello/mallory", HTTP_HOST="evil.example")  # DisallowedHost
            client.get("/boom")

            async def concurrent():
                client = AsyncClient()
                await asyncio.gather(*(
                    client.get(f"/async/n{{i}}", headers={{"X-Request-ID": f"id-{{i}}"}})
                    for i in range(60)))
            asyncio.run(concurrent())
            import socket
            # What runserver's WSGIRequestHandler logs: the request socket as an extra.
            with socket.socket() as sock:
                logging.getLogger("django.server").warning(
                    '"GET /missing HTTP/1.1" 404 179',
                    extra={{"request": sock, "server_time": "26/Nov/2026 11:00:00",
                           "status_code": 404}})
            print(logging.getLogger().handlers[0].flush(20))
        """,
            {**child_env(server), "TINYBIRD_DATASOURCE": "django_logs"},
        )
        assert result.stdout.strip() == "True", result.stderr
        events = server.events("django_logs")
        hello = by_logger(events, "shop")
        ada = next(e for e in hello if e["visitor"] == "ada")
        assert ada["href"] == "http://testserver/hello/ada"  # no query string by default
        assert ada["request_id"] == "trusted-1"
        assert ada["service"] == "shop"
        # 60 interleaved async requests: each event carries its own request's href and id.
        async_events = [e for e in hello if e["event"] == "said hello asynchronously"]
        assert len(async_events) == 60
        for event in async_events:
            number = event["visitor"][1:]
            assert event["href"] == f"http://testserver/async/n{number}"
            assert event["request_id"] == f"id-{number}"
        errors = by_logger(events, "django.request")
        boom = next(e for e in errors if "/boom" in e["event"])
        assert "RuntimeError: kaboom" in boom["exception"]
        assert "Traceback (most recent call last)" in boom["exception"]
        (served,) = by_logger(events, "django.server")
        assert served["status_code"] == 404
        assert served["request"].startswith("<socket.socket")  # repaired, not lost
        security = [e for e in events if e["logger"].startswith("django.security")]
        assert security and security[0]["href"] == "http://testserver/hello/mallory"
        access = by_logger(events, "tinybird_export.access")
        statuses = sorted(e["status"] for e in access)
        assert statuses.count(200) == 61 and 500 in statuses
        first = next(e for e in access if e["route"] == "hello/<str:name>" and e["status"] == 200)
        assert first["method"] == "GET" and first["duration_ms"] >= 0

    def test_example_demo_runs_against_the_local_server(self) -> None:
        """The Django example's demo runs as written against the local server."""
        pytest.importorskip("django")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TINYBIRD_")}
        result = subprocess.run(
            [sys.executable, str(DJANGO_PROJECT / "demo.py")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "'request_id': 'req-ada'" in result.stdout
        assert "Internal Server Error: /boom" in result.stdout


class TestFlask:
    def test_dictconfig_before_flask_and_init_app(self, server: EventsServer) -> None:
        """dictConfig before Flask, then init_app: requests carry their context."""
        pytest.importorskip("flask")
        result = run_python(
            f"""
            import logging, sys
            sys.path.insert(0, {str(Path(ROOT) / "examples")!r})
            from flask_app import app
            client = app.test_client()
            client.get("/hello/ada?code=oauth-secret", headers={{"X-Request-ID": "r-1"}})
            client.get("/hello/bob")
            client.get("/boom")
            print(logging.getLogger().handlers[0].flush(20))
        """,
            {**child_env(server), "TINYBIRD_DATASOURCE": "flask_logs"},
        )
        assert result.stdout.strip() == "True", result.stderr
        events = server.events("flask_logs")
        ada, bob = by_logger(events, "shop")
        assert ada["href"] == "http://localhost/hello/ada" and ada["request_id"] == "r-1"
        assert bob["request_id"] and bob["request_id"] != "r-1"
        errors = [e for e in events if "kaboom" in e["exception"]]
        assert errors and "RuntimeError: kaboom" in errors[0]["exception"]
        access = by_logger(events, "tinybird_export.access")
        assert sorted(e["status"] for e in access) == [200, 200, 500]
        assert {e["route"] for e in access} == {"/hello/<name>", "/boom"}

    def test_example_runs_against_the_local_server(self) -> None:
        """examples/flask_app.py runs as written against the local server."""
        pytest.importorskip("flask")
        result = run_example("flask_app.py")
        assert result.returncode == 0, result.stderr
        assert "'request_id': 'req-grace'" in result.stdout
        assert result.stderr == ""

    def test_integrations_are_not_imported_by_default(self) -> None:
        """Importing the package imports neither Django nor Flask."""
        result = run_python("""
            import sys, tinybird_export
            tinybird_export.TinybirdHandler(datasource="x", token="t").close()
            print(sorted(m for m in sys.modules if m.split(".")[0] in ("django", "flask")))
        """)
        assert result.stdout.strip() == "[]", result.stderr


class TestGunicorn:
    @pytest.mark.parametrize("preload", [False, True])
    def test_prefork_workers_deliver_every_request_once(
        self, server: EventsServer, preload: bool
    ) -> None:
        """gunicorn's prefork workers deliver each request's record exactly once."""
        pytest.importorskip("gunicorn")
        port = free_port()
        command = [
            str(Path(sys.executable).parent / "gunicorn"),
            "-w",
            "2",
            "-b",
            f"127.0.0.1:{port}",
            "--chdir",
            str(Path(ROOT) / "examples"),
            "--graceful-timeout",
            "20",
            *(["--preload"] if preload else []),
            "flask_app:app",
        ]
        env = {**os.environ, **child_env(server), "TINYBIRD_DATASOURCE": "gunicorn_logs"}
        with subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as proc:
            try:
                pool = urllib3.PoolManager(retries=False, timeout=5)
                deadline = time.monotonic() + 30
                while True:  # a polling helper with a deadline: gunicorn is starting up
                    try:
                        pool.request("GET", f"http://127.0.0.1:{port}/hello/probe")
                        break
                    except urllib3.exceptions.HTTPError:
                        assert time.monotonic() < deadline, "gunicorn did not start"
                        time.sleep(0.1)
                ids = [f"g-{preload}-{i}" for i in range(40)]
                for request_id in ids:
                    response = pool.request(
                        "GET",
                        f"http://127.0.0.1:{port}/hello/x",
                        headers={"X-Request-ID": request_id},
                    )
                    assert response.status == 200
            finally:
                proc.send_signal(signal.SIGTERM)
                _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        events = by_logger(server.events("gunicorn_logs"), "shop")
        seen = [e["request_id"] for e in events if e["request_id"] in ids]
        assert sorted(seen) == sorted(ids)  # every request's event, exactly once
        # Sent by the workers themselves (there are two; keep-alive may favour one), never
        # by the master, and nothing twice.
        processes = {e["process"] for e in events}
        assert proc.pid not in processes and 1 <= len(processes) <= 2, processes
        assert len({e["event_id"] for e in events}) == len(events)


class TestUwsgiCheck:
    @pytest.mark.parametrize(
        ("options", "expected"),
        [
            ({}, "enable-threads = true"),
            ({"enable-threads": True, "master": True}, "lazy-apps = true"),
            ({"enable-threads": True, "master": True, "lazy-apps": True}, None),
        ],
    )
    def test_warns_once_with_the_fix(self, options: dict[str, Any], expected: str | None) -> None:
        """Under uWSGI, a configuration that breaks sending is said once, with the fix."""
        result = run_python(f"""
            import sys, types
            sys.modules["uwsgi"] = types.SimpleNamespace(opt={options!r})
            from tinybird_export import TinybirdHandler
            for _ in range(2):
                TinybirdHandler(datasource="x", token="t", exit_timeout=0).close()
        """)
        if expected is None:
            assert result.stderr == ""
        else:
            assert result.stderr.count("tinybird-export: uWSGI") == 1
            assert expected in result.stderr


class TestStructlogAndLoguru:
    def test_structlog_through_render_to_log_kwargs(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """structlog's render_to_log_kwargs: its fields arrive as extras."""
        structlog = pytest.importorskip("structlog")
        handler = make_handler()
        logger.addHandler(handler)
        structlog.configure(
            processors=[
                structlog.stdlib.add_log_level,
                structlog.processors.TimeStamper("iso"),
                structlog.stdlib.render_to_log_kwargs,
            ],
            logger_factory=lambda *args: logger,
            wrapper_class=structlog.stdlib.BoundLogger,
        )
        try:
            structlog.get_logger().bind(user="u1").info("checkout done", cart_id=42)
        finally:
            structlog.reset_defaults()
        assert handler.flush(10)
        (event,) = server.events()
        assert event["event"] == "checkout done"
        assert (event["user"], event["cart_id"]) == ("u1", 42)
        assert event["level"] == "INFO"  # ours; structlog's own keys stay in attributes
        assert event["attributes"]["level"] == "info"
        assert "timestamp" in event["attributes"]

    def test_loguru_extras_flattened_and_traceback_in_exception(
        self, server: EventsServer, make_handler: Any
    ) -> None:
        """loguru's bound fields arrive as extras, its traceback as exception."""
        loguru = pytest.importorskip("loguru")
        handler = make_handler()
        sink = loguru.logger.add(handler, format="{message}")
        try:
            loguru.logger.bind(user="u1").info("hello from loguru")
            try:
                1 / 0
            except ZeroDivisionError:
                loguru.logger.exception("it failed")
        finally:
            loguru.logger.remove(sink)
        assert handler.flush(10)
        hello, failed = server.events()
        assert hello["event"] == "hello from loguru" and hello["user"] == "u1"
        assert hello["attributes"] == {"user": "u1"}
        assert "extra" not in hello
        assert failed["event"] == "it failed"
        assert failed["exception"].startswith("Traceback (most recent call last):")
        assert "ZeroDivisionError" in failed["exception"]
        assert failed["level"] == "ERROR"


def test_handler_repr_has_no_token() -> None:
    """A handler's repr never shows its token."""
    handler = TinybirdHandler(datasource="x", token="secret-token", exit_timeout=0)
    try:
        assert "secret-token" not in repr(handler)
    finally:
        handler.close()
