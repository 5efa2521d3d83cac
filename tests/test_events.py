"""The flat event for a log record, checked on what arrives at the server."""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinybird_export import TinybirdHandler
from tinybird_export._line_encoder import TRUNCATION_MARKER, encode_event
from tinybird_export._record_mapper import LOG_FIELDS, RecordMapper
from tinybird_export.testing import EventsServer

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}\Z")


def send(
    handler: TinybirdHandler,
    logger: logging.Logger,
    server: EventsServer,
    log: Callable[[logging.Logger], None],
) -> dict[str, Any]:
    logger.addHandler(handler)
    log(logger)
    assert handler.flush(10)
    return server.events()[-1]


class TestLogEvent:
    def test_fields_of_a_record(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """timestamp, event, href, level, logger, service, exception, event_id and the rest."""
        handler = make_handler(service="shop", fields={"environment": "prod"})
        event = send(
            handler,
            logger,
            server,
            lambda log: log.info(
                "user %s did %s",
                "u1",
                "checkout",
                extra={"href": "https://shop.example/cart", "cart_id": 42},
            ),
        )
        assert TIMESTAMP.match(event["timestamp"])
        assert event["event"] == "user u1 did checkout"
        assert event["href"] == "https://shop.example/cart"
        assert event["level"] == "INFO"
        assert event["logger"] == logger.name
        assert event["service"] == "shop"
        assert event["exception"] == ""
        assert event["environment"] == "prod"
        assert event["cart_id"] == 42
        assert event["attributes"] == {"href": "https://shop.example/cart", "cart_id": "42"}
        assert event["function"] == "<lambda>"
        assert event["file"] == __file__
        assert event["trace_id"] == event["span_id"] == ""
        assert isinstance(event["line"], int)
        assert isinstance(event["process"], int)
        # Wire order: the built-ins in LOG_FIELDS order, the extras after "attributes", the
        # static fields last.
        assert [k for k in event if k in LOG_FIELDS] == list(LOG_FIELDS)
        keys = list(event)
        assert keys.index("attributes") < keys.index("cart_id") < keys.index("level")
        assert keys[-1] == "environment"

    def test_timestamp_is_utc_from_record_created(self) -> None:
        """timestamp is record.created in UTC, to the microsecond."""
        record = logging.LogRecord("x", 20, "f", 1, "m", (), None)
        record.created = datetime.datetime(
            2024, 6, 23, 16, 0, 0, 500, tzinfo=datetime.timezone.utc
        ).timestamp()
        line, _ = RecordMapper("", {}, "both").encode(record, 1 << 20)
        assert line is not None
        assert orjson.loads(line)["timestamp"] == "2024-06-23 16:00:00.000500"

    def test_href_defaults_to_empty(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """Outside a request, href is empty and attributes an empty map."""
        event = send(make_handler(), logger, server, lambda log: log.warning("plain"))
        assert event["href"] == ""
        assert event["attributes"] == {}

    def test_exception_traceback(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """log.exception() sends the rendered message and the formatted traceback."""

        def log(log: logging.Logger) -> None:
            try:
                1 / 0
            except ZeroDivisionError:
                log.exception("boom %s", "arg")

        event = send(make_handler(), logger, server, log)
        assert event["event"] == "boom arg"
        assert event["level"] == "ERROR"
        assert event["exception"].startswith("Traceback (most recent call last):")
        assert event["exception"].endswith("ZeroDivisionError: division by zero")

    def test_builtin_fields_win_collisions(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """An extra named like a built-in keeps its value under attributes only."""
        event = send(
            make_handler(),
            logger,
            server,
            lambda log: log.info("x", extra={"level": "fake", "service": "fake"}),
        )
        assert event["level"] == "INFO"
        assert event["service"] == ""
        assert event["attributes"] == {"level": "fake", "service": "fake"}

    @pytest.mark.parametrize(
        ("mode", "flat", "attributes"),
        [
            ("both", True, {"k": "v"}),
            ("flat", True, {}),
            ("attributes", False, {"k": "v"}),
            ("none", False, {}),
        ],
    )
    def test_extras_modes(
        self,
        server: EventsServer,
        make_handler: Any,
        logger: logging.Logger,
        mode: str,
        flat: bool,
        attributes: dict[str, str],
    ) -> None:
        """Each extras mode puts extras at the top level, under attributes, or both."""
        event = send(
            make_handler(extras=mode), logger, server, lambda log: log.info("x", extra={"k": "v"})
        )
        assert ("k" in event) is flat
        assert event["attributes"] == attributes

    def test_unicode_round_trips(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """Any Unicode text, quotes, backslashes and control characters round-trip."""
        text = 'naïve ☃ 日本語 \U0001f600 "quoted" \\ \n\t'
        event = send(make_handler(), logger, server, lambda log: log.info(text, extra={"u": text}))
        assert event["event"] == text
        assert event["u"] == text

    def test_unserialisable_and_big_values_are_converted(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """No record is lost to serialisation; integers beyond 2^53 become strings."""

        class Thing:
            def __str__(self) -> str:
                return "a thing"

        when = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
        event = send(
            make_handler(),
            logger,
            server,
            lambda log: log.info(
                "x", extra={"thing": Thing(), "big": 2**60, "when": when, "raw": b"\xffbytes"}
            ),
        )
        assert event["thing"] == "a thing"
        assert event["big"] == str(2**60)
        assert event["attributes"]["big"] == str(2**60)
        assert event["when"] == "2024-01-02T03:04:05Z"
        assert event["raw"] == "\\xffbytes"

    def test_event_reflects_record_when_logged(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """A mutable extra changed after the call does not change what is sent."""
        handler = make_handler()
        logger.addHandler(handler)
        cart = {"items": [1]}
        logger.info("x", extra={"cart": cart})
        cart["items"].append(2)
        assert handler.flush(10)
        assert server.events()[0]["cart"] == {"items": [1]}

    def test_event_ids_are_unique(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """Every event gets its own event_id."""
        handler = make_handler()
        logger.addHandler(handler)
        for i in range(500):
            logger.info("n %d", i)
        assert handler.flush(10)
        ids = [e["event_id"] for e in server.events()]
        assert len(set(ids)) == 500

    def test_bad_format_args_are_kept(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """A message whose arguments do not fit its format is kept, with a note."""
        event = send(make_handler(), logger, server, lambda log: log.info("%d items", "many"))
        assert event["event"].startswith("%d items (format failed")


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(),
    st.binary(max_size=20),
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_keys = st.text(min_size=1, max_size=8).filter(lambda k: k.isidentifier())


class TestFastPathMatchesDictPath:
    @settings(
        derandomize=True,
        deadline=None,
        max_examples=300,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(message=st.text(), extras=st.dictionaries(_keys, _values, max_size=4))
    def test_same_bytes(self, message: str, extras: dict[str, Any]) -> None:
        """The spliced fast path encodes exactly what the dict path would."""
        mapper = RecordMapper("svc", {"env": "prod"}, "both")
        logger = logging.getLogger("prop")
        record = logger.makeRecord(
            "prop",
            20,
            "f.py",
            3,
            message,
            (),
            None,
            extra={
                k: v
                for k, v in extras.items()
                if k not in ("message", "asctime")
                and k not in logging.LogRecord("", 0, "", 0, "", (), None).__dict__
            },
        )
        fast, _ = mapper.encode(record, 1 << 20)
        slow, _ = encode_event(mapper(record), 1 << 20)
        assert fast is not None and slow is not None
        strip = re.compile(rb'"event_id":"[^"]+"')
        assert strip.sub(b"", fast) == strip.sub(b"", slow)
        orjson.loads(fast)


class TestOversize:
    def test_huge_message_is_truncated_with_marker(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """A 50 MB message arrives shortened with a marker, never crashes, never vanishes."""
        handler = make_handler()
        event = send(handler, logger, server, lambda log: log.info("x" * 50_000_000))
        assert event["event"].startswith("xxx")
        marker = re.escape(TRUNCATION_MARKER).replace(r"\{\}", r"\d+")
        assert re.search(marker + "$", event["event"])
        assert handler.stats().truncated == 1

    def test_huge_extra_is_truncated(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """A 50 MB extra is truncated with a marker to fit max_event_bytes."""
        handler = make_handler()
        event = send(
            handler, logger, server, lambda log: log.info("m", extra={"blob": "y" * 50_000_000})
        )
        assert event["event"] == "m"
        assert "truncated" in event["blob"]
        assert len(orjson.dumps(event)) <= 1 << 20


def test_no_otel_import(server: EventsServer) -> None:
    """The handler imports nothing from OpenTelemetry."""
    from tests.helpers import run_python

    result = run_python(
        f"""
        import logging, sys, tinybird_export
        h = tinybird_export.TinybirdHandler(
            datasource="x", token="{server.token}", host="{server.url}"
        )
        logging.getLogger().addHandler(h); logging.warning("x")
        print(sorted(m for m in sys.modules if m.startswith(("opentelemetry", "django", "flask"))))
    """
    )
    assert result.stdout.strip() == "[]", result.stderr
    assert result.stderr == ""
