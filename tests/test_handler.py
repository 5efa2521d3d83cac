"""TinybirdHandler end to end through the real test server: config routes, batching,
wait, gzip, flush, stats and the plain-event API."""

from __future__ import annotations

import gzip
import logging
import logging.config
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tinybird_export import TinybirdEvents, TinybirdHandler
from tinybird_export.testing import EventsServer, Reply


class TestConfigRoutes:
    def test_dictconfig_with_token_from_env(
        self, server: EventsServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The README's quickstart: class + datasource, token and host from the environment."""
        monkeypatch.setenv("TINYBIRD_TOKEN", server.token or "")
        monkeypatch.setenv("TINYBIRD_HOST", server.url)
        logging.config.dictConfig(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "handlers": {
                    "tinybird": {
                        "class": "tinybird_export.TinybirdHandler",
                        "datasource": "app_logs",
                        "flush_interval": "0.1",
                    }
                },
                "loggers": {
                    "shop": {"handlers": ["tinybird"], "level": "INFO", "propagate": False}
                },
            }
        )
        try:
            logging.getLogger("shop").info(
                "checkout", extra={"href": "https://shop.example/cart", "cart_id": 42}
            )
            handler = logging.getLogger("shop").handlers[0]
            assert isinstance(handler, TinybirdHandler)
            assert handler.flush(10)
            (request,) = server.requests
            assert request.path == "/v0/events"
            assert request.query == {"name": "app_logs"}
            assert request.headers["Authorization"] == f"Bearer {server.token}"
            assert request.headers["Content-Type"] == "application/x-ndjson"
            assert request.headers["Content-Encoding"] == "gzip"
            assert request.rows[0]["event"] == "checkout"
            assert request.rows[0]["cart_id"] == 42
        finally:
            logging.config.dictConfig(
                {
                    "version": 1,
                    "disable_existing_loggers": False,
                    "loggers": {"shop": {"handlers": []}},
                }
            )

    def test_fileconfig(self, server: EventsServer, tmp_path: Path) -> None:
        """fileConfig builds the handler from strings, wait=true included."""
        ini = tmp_path / "logging.ini"
        ini.write_text(f"""
[loggers]
keys=root,app
[handlers]
keys=tinybird
[formatters]
keys=
[logger_root]
handlers=
[logger_app]
qualname=fileapp
handlers=tinybird
level=INFO
propagate=0
[handler_tinybird]
class=tinybird_export.TinybirdHandler
kwargs={{"datasource": "file_logs", "host": "{server.url}", "token": "{server.token}", "wait": "true"}}
""")
        logging.config.fileConfig(ini, disable_existing_loggers=False)
        handler = logging.getLogger("fileapp").handlers[0]
        assert isinstance(handler, TinybirdHandler)
        try:
            logging.getLogger("fileapp").info("from fileConfig")
            assert handler.flush(10)
            (request,) = server.requests
            assert request.query == {"name": "file_logs", "wait": "true"}
            assert request.status == 200
        finally:
            logging.getLogger("fileapp").handlers.clear()
            handler.close()


class TestWire:
    def test_gzip_off_sends_raw_ndjson_byte_for_byte(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """compression=none sends the NDJSON lines as they are, without Content-Encoding."""
        handler = make_handler(compression="none")
        logger.addHandler(handler)
        logger.info("a")
        logger.info("b")
        assert handler.flush(10)
        (request,) = server.requests
        assert "Content-Encoding" not in request.headers
        lines = request.raw_body.split(b"\n")
        assert lines[-1] == b""
        assert [orjson.loads(line)["event"] for line in lines[:-1]] == ["a", "b"]
        assert handler.stats().bytes_sent == len(request.raw_body)

    def test_gzip_body_decodes_to_the_same_lines(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """A gzipped body decodes to the lines, and stats count raw and wire bytes."""
        handler = make_handler()
        logger.addHandler(handler)
        for i in range(100):
            logger.info("line %d", i)
        assert handler.flush(10)
        (request,) = server.requests
        assert gzip.decompress(request.raw_body) == request.body
        stats = handler.stats()
        assert stats.bytes_sent == len(request.body)
        assert stats.wire_bytes_sent == len(request.raw_body) < stats.bytes_sent

    def test_wait_true_asks_for_acknowledged_writes(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """wait=true asks for it in the query and gets the 200 of a written batch."""
        handler = make_handler(wait=True)
        logger.addHandler(handler)
        logger.info("x")
        assert handler.flush(10)
        assert server.requests[0].query["wait"] == "true"
        assert server.requests[0].status == 200

    def test_token_never_in_url(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """The token travels in the Authorization header only, never in the URL."""
        handler = make_handler()
        logger.addHandler(handler)
        logger.info("x")
        assert handler.flush(10)
        assert server.token and server.token not in server.requests[0].path
        assert server.token not in str(server.requests[0].query)


class TestBatching:
    def test_10000_quick_records_go_in_a_handful_of_requests(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """10,000 records in a tight loop arrive in order, in at most five requests."""
        handler = make_handler()
        logger.addHandler(handler)
        for i in range(10_000):
            logger.info("n %d", i)
        assert handler.flush(30)
        assert len(server.events()) == 10_000
        assert [e["event"] for e in server.events()] == [f"n {i}" for i in range(10_000)]
        assert len(server.requests) <= 5

    def test_batch_limits_split_requests(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """batch_max_rows caps each request's rows."""
        handler = make_handler(batch_max_rows=100, flush_interval=60)
        logger.addHandler(handler)
        for i in range(1000):
            logger.info("n %d", i)
        assert handler.flush(30)
        assert [len(r.rows) for r in server.requests] == [100] * 10

    def test_batch_max_bytes_keeps_requests_under_the_cap(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """batch_max_bytes caps each request's raw size."""
        handler = make_handler(batch_max_bytes=20_000, max_event_bytes=2_000, compression="none")
        logger.addHandler(handler)
        for _ in range(100):
            logger.info("x" * 1000)
        assert handler.flush(30)
        assert all(len(r.raw_body) <= 20_000 for r in server.requests)
        assert sum(len(r.rows) for r in server.requests) == 100

    def test_interval_flush_without_explicit_flush(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """The worker's timer sends a lone record; nobody calls flush."""
        handler = make_handler(flush_interval=0.05)
        logger.addHandler(handler)
        logger.info("lonely")
        assert server.wait_for_rows(1, timeout=10)


class TestFlushAndStats:
    def test_flush_returns_false_on_timeout(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """flush(timeout) returns False in time when the endpoint hangs."""
        server.respond(Reply(hang=True))
        handler = make_handler(timeout=30)
        logger.addHandler(handler)
        logger.info("x")
        started = time.monotonic()
        assert handler.flush(0.3) is False
        assert time.monotonic() - started < 5
        server.release()
        assert handler.flush(10) is True

    def test_stats_invariant(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """emitted == sent + dropped + queued + in_flight, and emitted == records logged."""
        server.respond(Reply(hang=True))
        handler = make_handler(queue_max_events=50, timeout=30)
        logger.addHandler(handler)
        for i in range(120):
            logger.info("n %d", i)
        stats = handler.stats()
        assert stats.emitted == 120
        assert stats.emitted == stats.sent + stats.dropped + stats.queued + stats.in_flight
        assert stats.dropped_by_reason == {"queue_full": 70}
        server.release()
        assert handler.flush(10) is False  # 70 were dropped since the handler was made
        assert handler.flush(10) is True  # and nothing since that flush
        stats = handler.stats()
        assert (stats.sent, stats.dropped, stats.queued, stats.in_flight) == (50, 70, 0, 0)
        assert stats.requests >= 1
        assert stats.queued_bytes == 0

    def test_logging_thread_not_held_up_by_flush(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """While one thread is inside flush() (with the handler lock, as logging.shutdown
        does), another thread's logger.info returns at once."""
        server.respond(Reply(hang=True))
        handler = make_handler(timeout=30)
        logger.addHandler(handler)
        logger.info("first")
        flushing = threading.Thread(
            target=lambda: (handler.acquire(), handler.flush(20), handler.release())
        )
        flushing.start()
        done = threading.Event()

        def log_then_say_done() -> None:
            logger.info("second")
            done.set()

        threading.Thread(target=log_then_say_done).start()
        assert done.wait(5)
        server.release()
        flushing.join(30)
        assert handler.flush(10)
        assert [e["event"] for e in server.events()] == ["first", "second"]

    def test_quarantine_counted_and_warned_once(
        self,
        server: EventsServer,
        make_handler: Any,
        logger: logging.Logger,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Quarantined rows are counted each time and said once."""
        server.script(Reply(quarantine=1), Reply(quarantine=2))
        handler = make_handler()
        logger.addHandler(handler)
        logger.info("a")
        assert handler.flush(10)
        logger.info("b")
        logger.info("c")
        assert handler.flush(10)
        stats = handler.stats()
        assert stats.quarantined == 3
        assert stats.sent == 3
        assert len(server.requests) == 2
        assert capsys.readouterr().err.count("app_logs_quarantine") == 1

    def test_close_is_idempotent_and_a_record_after_it_reopens_the_handler(
        self,
        server: EventsServer,
        make_handler: Any,
        logger: logging.Logger,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """close() twice is harmless; a record after it reopens the handler (as a
        FileHandler does), is delivered, and the reopening is said once."""
        handler = make_handler()
        logger.addHandler(handler)
        logger.info("before")
        handler.close()
        handler.close()
        logger.info("after")
        logger.info("again")
        assert handler.flush(10) is True
        assert [e["event"] for e in server.events()] == ["before", "after", "again"]
        stats = handler.stats()  # every opening's counters
        assert (stats.emitted, stats.sent, stats.dropped) == (3, 3, 0) and stats.accounted()
        assert capsys.readouterr().err.count("It reopened") == 1
        handler.close()
        assert handler.stats().queued == 0


class TestHandlerContract:
    def test_a_failing_emit_never_raises_into_the_app_and_is_counted(
        self,
        server: EventsServer,
        make_handler: Any,
        logger: logging.Logger,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A bug in emit goes to handleError and is counted as error, never raised."""
        handler = make_handler()
        logger.addHandler(handler)

        def broken(record: logging.LogRecord, max_bytes: int) -> Any:
            raise RuntimeError("mapper bug")

        monkeypatch.setattr(handler._mapper, "encode", broken)
        monkeypatch.setattr(logging, "raiseExceptions", True)  # the default, said aloud
        logger.info("lost")  # does not raise
        monkeypatch.undo()
        logger.info("kept")
        assert handler.flush(10) is False  # "lost" was dropped, counted as error
        assert [e["event"] for e in server.events()] == ["kept"]
        assert handler.stats().dropped_by_reason == {"error": 1}
        assert "RuntimeError: mapper bug" in capsys.readouterr().err  # logging's handleError

    def test_handler_filters_drop_and_pass_records(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """The handler's filters and level decide what is emitted and counted."""
        handler = make_handler()
        handler.addFilter(lambda record: "secret" not in record.getMessage())
        handler.setLevel(logging.INFO)
        logger.addHandler(handler)
        logger.info("public")
        logger.info("a secret")
        logger.debug("below the handler's level")
        assert handler.flush(10)
        assert [e["event"] for e in server.events()] == ["public"]
        assert handler.stats().emitted == 1


class TestSharedWorker:
    def test_same_host_and_token_share_one_worker(
        self,
        server: EventsServer,
        make_handler: Any,
        make_events: Any,
        logger: logging.Logger,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Producers of one host and token share one worker, whatever their settings:
        differing runtime settings are said once (the longest timeout holds for all)."""
        first = make_handler(datasource="a")
        second = make_handler(datasource="b", timeout=20)
        events = make_events(timeout=30)
        said = [line for line in capsys.readouterr().err.splitlines() if "share one" in line]
        assert len(said) == 1, said  # one setting differs, said once: one worker
        assert "for 10.0" in said[0] and "timeout=20.0 holds" in said[0]
        logger.addHandler(first)
        logger.addHandler(second)
        logger.info("x")
        events.send({"event": "page_view"})
        assert first.flush(10) and second.flush(10) and events.flush(10)
        assert sorted(r.datasource for r in server.requests) == ["a", "b", "simple_events"]
        # Three data sources may use up to three threads, all named for the package.
        names = [t.name for t in threading.enumerate() if t.name.startswith("tinybird")]
        assert 1 <= len(names) <= 3 and set(names) == {"tinybird-export-worker"}
        assert first.stats().sent == second.stats().sent == events.stats().sent == 1


class TestPlainEvents:
    def test_send_fills_timestamp_and_event_id(
        self, server: EventsServer, make_events: Any
    ) -> None:
        """send() fills timestamp and event_id when absent and keeps them when given."""
        events: TinybirdEvents = make_events()
        events.send({"href": "https://shop.example/", "event": "page_view"})
        events.send(
            {
                "timestamp": "2024-01-01 00:00:00.000000",
                "href": "/b",
                "event": "click",
                "event_id": "mine",
            }
        )
        assert events.flush(10)
        first, second = server.events("simple_events")
        assert first["event"] == "page_view"
        assert first["timestamp"][:2] == "20" and len(first["timestamp"]) == 26
        assert first["event_id"]
        assert second == {
            "timestamp": "2024-01-01 00:00:00.000000",
            "href": "/b",
            "event": "click",
            "event_id": "mine",
        }

    def test_send_rejects_non_mapping(self, make_events: Any) -> None:
        """send() of something that is not a mapping is a TypeError."""
        with pytest.raises(TypeError):
            make_events().send(["not", "a", "dict"])
