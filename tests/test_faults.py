"""Delivery under faults, injected through the test server: retries, rate limits, refusals,
413 splitting, outages, bad input, secrets and transport settings."""

from __future__ import annotations

import email.utils
import gc
import itertools
import logging
import math
import os
import re
import ssl
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import ROOT, child_env, closed_port_url, run_python, worker_threads
from tinybird_export import TinybirdHandler, _retry
from tinybird_export._client import EventsClient
from tinybird_export.testing import EventsServer, Reply


def log_and_flush(
    handler: TinybirdHandler, logger: logging.Logger, count: int, timeout: float = 30
) -> bool:
    logger.addHandler(handler)
    for i in range(count):
        logger.info("n %d", i)
    return handler.flush(timeout)


class TestRetries:
    @pytest.mark.parametrize("status", [408, 409, 500, 502, 503, 504])
    def test_retryable_status_is_retried_until_delivered(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger, status: int
    ) -> None:
        """A retryable status is retried until the batch is delivered, in order."""
        server.script(Reply(status=status), Reply(status=status))
        handler = make_handler()
        assert log_and_flush(handler, logger, 3)
        assert [r.status for r in server.requests] == [status, status, 202]
        assert [e["event"] for e in server.events()] == ["n 0", "n 1", "n 2"]
        stats = handler.stats()
        assert (stats.sent, stats.retries, stats.requests, stats.dropped) == (3, 2, 3, 0)

    def test_backoff_grows_and_is_never_a_tight_loop(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """Retries back off, growing, and never come faster than 0.25 s apart."""
        server.script(*[Reply(status=503)] * 3)
        assert log_and_flush(make_handler(), logger, 1)
        times = [r.received_at for r in server.requests]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(gap >= 0.2 for gap in gaps), gaps  # 0.5 s x jitter 0.5-1.0 at least
        assert gaps[2] > gaps[0]

    def test_connection_reset_is_retried(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """A reset connection is retried, and counted as a retry."""
        server.script(Reply(reset=True))
        handler = make_handler()
        assert log_and_flush(handler, logger, 2)
        assert len(server.events()) == 2
        assert handler.stats().retries == 1

    def test_an_attempt_says_whether_the_request_may_have_been_stored(
        self, server: EventsServer
    ) -> None:
        """A read timeout (sent whole, no answer) may have been stored; a refused
        connection, an early answer and a connect failure were not."""
        server.respond(Reply(hang=True))
        client = EventsClient(server.url, server.token or "", connect_timeout=1)
        timed_out = client.post("ds", b'{"a":1}\n', wait=False, read_timeout=0.3)
        server.release()
        refused = EventsClient(closed_port_url(), "t").post(
            "ds", b"{}\n", wait=False, read_timeout=1
        )
        answered = client.post("ds", b"{}\n", wait=False, read_timeout=5)
        client.close()
        assert (timed_out.status, timed_out.kind, timed_out.unanswered) == (None, "timeout", True)
        assert (refused.kind, refused.unanswered) == ("refused", False)
        assert (answered.status, answered.unanswered) == (202, False)

    def test_read_timeout_is_retried_and_event_id_dedupes(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """The server takes the rows but answers too late: the retry duplicates them, and
        event_id tells the copies apart."""
        server.script(Reply(delay=1.0))
        handler = make_handler(timeout=0.3)
        assert log_and_flush(handler, logger, 5)
        assert server.wait_for(lambda: len(server.requests) == 2, 10)
        events = server.events()
        assert len(events) == 10
        assert len({e["event_id"] for e in events}) == 5

    def test_backoff_schedule(self) -> None:
        """The backoff stays between 0.25 s and 30 s, reaching the cap."""
        delays = [_retry.backoff(n) for n in range(12)]
        assert all(0.25 <= d <= 30 for d in delays)
        assert delays[-1] >= 15

    @pytest.mark.parametrize(
        ("headers", "expected"),
        [
            ({"retry-after": "3"}, 3.0),
            ({"x-ratelimit-reset": "2"}, 2.0),
            ({"retry-after": "1", "x-ratelimit-reset": "9"}, 1.0),
            ({"retry-after": "soon"}, None),
            ({"retry-after": "1000"}, 60.0),  # plausible: capped at a minute
            ({"retry-after": "99999"}, None),  # not a wait (issue 24: it parked 300 s)
            ({"retry-after": "1e308"}, None),
            ({"x-ratelimit-reset": "1e9"}, None),  # an epoch, as gateways send
            ({"retry-after": "1e308", "x-ratelimit-reset": "2"}, 2.0),
            ({"retry-after": "0.05"}, 0.5),
            ({}, None),
        ],
    )
    def test_server_delay_headers(self, headers: dict[str, str], expected: float | None) -> None:
        """Retry-After and X-RateLimit-Reset are read in bounds, bogus values ignored."""
        assert _retry.server_delay(headers) == expected

    def test_an_absurd_wait_falls_back_to_the_backoff(self) -> None:
        """An absurd Retry-After or X-RateLimit-Reset is no wait: the backoff schedule applies."""
        for headers in ({"retry-after": "1e308"}, {"x-ratelimit-reset": "1e9"}):
            assert _retry.delay(429, headers, 0) <= 0.5
            assert _retry.delay(429, headers, 3) <= 4.0

    def test_retry_after_http_date(self) -> None:
        """A Retry-After HTTP date is a wait from now."""
        now = time.time()
        header = email.utils.formatdate(now + 5, usegmt=True)
        delay = _retry.server_delay({"retry-after": header}, now=now)
        assert delay is not None and 3.9 <= delay <= 5.1

    def test_retry_after_http_date_is_gmt_whatever_its_zone_says(self) -> None:
        """``-0000`` made a naive datetime, read in the machine's local time zone."""
        now = time.time()
        header = email.utils.formatdate(now + 5)[:-5] + "-0000"
        delay = _retry.server_delay({"retry-after": header}, now=now)
        assert delay is not None and 3.9 <= delay <= 5.1

    def test_a_far_http_date_is_not_a_wait(self) -> None:
        """A Retry-After date in year 9999 is not a wait."""
        far = "Fri, 31 Dec 9999 23:59:59 GMT"
        assert _retry.server_delay({"retry-after": far}) is None


class TestRateLimit:
    def test_429_pauses_only_that_data_source(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """Retry-After is honoured for the limited data source; another keeps flowing, and
        the caller never waits."""
        server.script(Reply(status=429, headers={"Retry-After": "1"}))
        limited = make_handler(datasource="limited")
        other = make_handler(datasource="other")
        logger.addHandler(limited)
        limited_logger = logger
        limited_logger.info("to limited")
        assert server.wait_for(lambda: len(server.requests) == 1, 10)
        other_logger = logging.getLogger(logger.name + ".other")
        other_logger.propagate = False
        other_logger.addHandler(other)
        started = time.monotonic()
        for i in range(100):
            limited_logger.info("more %d", i)
        assert time.monotonic() - started < 0.5  # the caller is not paused
        other_logger.info("to other")
        assert other.flush(10)
        assert server.events("limited") == []
        assert limited.flush(10)
        limited_requests = [r for r in server.requests if r.datasource == "limited"]
        assert limited_requests[1].received_at - limited_requests[0].received_at >= 0.95
        assert [e["event"] for e in server.events("limited")] == ["to limited"] + [
            f"more {i}" for i in range(100)
        ]

    def test_ratelimit_reset_header_is_honoured(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """A 429's X-RateLimit-Reset is waited for before the retry."""
        server.script(Reply(status=429, headers={"X-RateLimit-Reset": "1"}))
        assert log_and_flush(make_handler(), logger, 1)
        first, second = server.requests
        assert second.received_at - first.received_at >= 0.95


class TestRefusals:
    @pytest.mark.parametrize(
        ("status", "hint"),
        [
            (400, "invalid"),
            (401, "TINYBIRD_TOKEN"),
            (403, "DATASOURCE:APPEND"),
            (404, "does not exist on this server"),  # loopback: no cloud region list
            (405, "refused"),
            (411, "Content-Length"),
            (422, "partially written"),
            (301, "redirect"),
            (307, "redirect"),
        ],
    )
    def test_not_retried_dropped_counted_and_told_once(
        self,
        server: EventsServer,
        make_handler: Any,
        logger: logging.Logger,
        capsys: pytest.CaptureFixture[str],
        status: int,
        hint: str,
    ) -> None:
        """A non-retryable status drops the batch, counted, and is said once with its fix."""
        headers = {"Location": "https://elsewhere.example/v0/events"} if status < 400 else {}
        server.respond(
            Reply(
                status=status,
                headers=headers,
                body=orjson.dumps({"error": f"server says {status}"}),
            )
        )
        handler = make_handler(datasource=f"refused_{status}")
        assert log_and_flush(handler, logger, 3) is False
        logger.info("again")
        assert handler.flush(10) is False
        stats = handler.stats()
        assert stats.dropped_by_reason == {f"http_{status}": 4}
        if status == 400:  # a 400 naming no line: its batch's halves tried once each (the
            # search for a bad line finds it about the request), then dropped at once
            assert (stats.retries, len(server.requests)) == (2, 4)
        else:
            assert stats.retries == 0
            assert len(server.requests) == 2  # no retry, redirect not followed
        err = capsys.readouterr().err
        assert err.count(f"answered {status}") == 1
        assert hint in err
        if status >= 400:
            assert f"server says {status}" in err

    def test_flush_is_false_after_drops_made_before_it_and_true_once_delivering(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """50 records dropped (404) before flush() is called: it says False; once the data
        source exists, the next round, all acknowledged, says True."""
        server.respond(Reply(status=404))
        handler = make_handler(datasource="missing", flush_interval=0.01)
        logger.addHandler(handler)
        for i in range(50):
            logger.warning("n %d", i)
        assert server.wait_for(lambda: handler.stats().dropped == 50, 10)
        assert handler.flush(5) is False
        server.reset()
        logger.warning("delivered")
        assert handler.flush(5) is True
        assert [e["event"] for e in server.events()] == ["delivered"]

    def test_the_streaming_example_says_false_against_a_missing_data_source(
        self, server: EventsServer
    ) -> None:
        """The main job against a workspace without the data source: not 'all acknowledged',
        and a failing exit status."""
        server.respond(Reply(status=404))
        result = subprocess.run(
            [sys.executable, str(Path(ROOT) / "examples" / "stream_events.py"), "--duration", "1"],
            env={**os.environ, "TINYBIRD_TOKEN": server.token or "", "TINYBIRD_HOST": server.url},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "all acknowledged: False" in result.stdout, result.stdout + result.stderr
        assert result.returncode == 1

    @pytest.mark.parametrize("named", [True, False], ids=["line named", "line not named"])
    def test_one_bad_event_does_not_poison_its_batch(
        self,
        make_handler: Any,
        logger: logging.Logger,
        capsys: pytest.CaptureFixture[str],
        named: bool,
    ) -> None:
        """The server refuses a whole batch of 1,000 for one bad event (400): that event
        alone is dropped and counted, the 999 others arrive once each (all 1,000 were
        dropped), and the server's words are quoted once."""
        with EventsServer(
            bad_row=lambda row: row.get("event") == "poison", name_bad_lines=named
        ) as strict:
            handler = make_handler(host=strict.url, token=strict.token, flush_interval=60)
            logger.addHandler(handler)
            for i in range(1000):
                logger.info("poison" if i == 700 else f"n {i}")
            assert handler.flush(30) is False  # one was dropped
            arrived = sorted(e["event"] for e in strict.events())
            assert arrived == sorted(f"n {i}" for i in range(1000) if i != 700)
            assert handler.stats().dropped_by_reason == {"http_400": 1}
            assert len(strict.requests) <= 1 + (1 if named else 2 * 10 + 2)
        err = capsys.readouterr().err
        assert err.count("the server refused one event of a batch") == 1, err
        if named:
            assert "line 701 is not a valid event" in err

    def test_404_from_a_cloud_host_lists_the_region_hosts(self) -> None:
        """A 404 from a cloud host says it may be the wrong region, listing the hosts."""
        hint = _retry.drop_hint(404, "regional", "https://api.tinybird.co")
        assert "wrong region" in hint and "https://api.us-east.aws.tinybird.co" in hint


class TestSplit:
    def test_413_splits_in_halves_until_accepted(
        self, make_handler: Any, logger: logging.Logger
    ) -> None:
        """A 413 splits the batch in halves until each part is accepted."""
        with EventsServer(max_body_bytes=3_000) as small:
            handler = make_handler(host=small.url, token=small.token, compression="none")
            assert log_and_flush(handler, logger, 64)
            assert [e["event"] for e in small.events()] == [f"n {i}" for i in range(64)]
            statuses = [r.status for r in small.requests]
            assert statuses[0] == 413
            assert all(len(r.raw_body) <= 3_000 for r in small.requests if r.status == 202)
            assert handler.stats().dropped == 0

    def test_single_event_over_the_cap_is_dropped_not_retried_forever(
        self, make_handler: Any, logger: logging.Logger
    ) -> None:
        """One event over the request cap is dropped as too_large, not retried."""
        with EventsServer(max_body_bytes=2_000) as small:
            handler = make_handler(host=small.url, token=small.token, compression="none")
            logger.addHandler(handler)
            logger.info("x" * 5_000)
            logger.info("small")
            assert handler.flush(10) is False
            assert handler.stats().dropped_by_reason == {"too_large": 1}
            assert [e["event"] for e in small.events()] == ["small"]


class TestOutage:
    def test_503_storm_then_recovery_delivers_in_order(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """After a run of 503s everything arrives, in order."""
        server.script(*[Reply(status=503, headers={"Retry-After": "0"})] * 3)
        handler = make_handler(batch_max_rows=50)
        assert log_and_flush(handler, logger, 300)
        assert [e["event"] for e in server.events()] == [f"n {i}" for i in range(300)]

    def test_hanging_server_then_recovery(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """A request cut by its timeout is retried once the server answers again."""
        server.script(Reply(hang=True))
        handler = make_handler(timeout=0.3)
        logger.addHandler(handler)
        for i in range(20):
            logger.info("n %d", i)
        assert server.wait_for(lambda: server.arrivals >= 1, 10)
        server.release()
        assert handler.flush(15)
        delivered = {e["event"] for e in server.events()}
        assert delivered == {f"n {i}" for i in range(20)}

    def test_byte_bound_drops_newest_and_counts_exactly(
        self, make_handler: Any, logger: logging.Logger
    ) -> None:
        """At the byte bound the newest events are dropped, each counted."""
        handler = make_handler(
            host=closed_port_url(),
            flush_timeout=0.1,
            queue_max_bytes=200_000,
            batch_max_bytes=100_000,
            max_event_bytes=10_000,
        )
        logger.addHandler(handler)
        for i in range(1000):
            logger.info("%04d %s", i, "x" * 900)
        stats = handler.stats()
        assert stats.emitted == 1000 == stats.sent + stats.dropped + stats.queued + stats.in_flight
        assert stats.queued_bytes <= 200_000
        assert stats.dropped_by_reason["queue_full"] > 700

    def test_rss_stays_within_bound_through_a_long_outage(self) -> None:
        """200,000 records of ~1 KB with the endpoint refusing: RSS grows by the byte
        bound (8 MiB) plus a constant (allocator fragmentation, measured to plateau at about
        31 MiB by 1.2M records), not by the ~200 MiB an unbounded queue would hold; and the
        counters add up exactly."""
        result = run_python(
            """
            import logging, resource
            from tinybird_export import TinybirdHandler
            def rss():
                with open("/proc/self/statm") as f:
                    return int(f.read().split()[1]) * resource.getpagesize()
            log = logging.getLogger("app"); log.propagate = False; log.setLevel(logging.INFO)
            handler = TinybirdHandler(queue_max_bytes=8 * 1024 * 1024, exit_timeout=0)
            log.addHandler(handler)
            for i in range(2000):
                log.info("warm %s", "x" * 900, extra={"n": i})
            before = rss()
            for i in range(200_000):
                log.info("%s", "x" * 900, extra={"n": i})
            growth = rss() - before
            s = handler.stats()
            print(growth, s.emitted, s.sent + s.dropped + s.queued + s.in_flight, s.queued_bytes)
        """,
            {
                "TINYBIRD_HOST": closed_port_url(),
                "TINYBIRD_TOKEN": "t",
                "TINYBIRD_DATASOURCE": "app_logs",
            },
            timeout=120,
        )
        growth, emitted, accounted, queued_bytes = map(int, result.stdout.split())
        assert emitted == accounted == 202_000
        assert queued_bytes <= 8 * 1024 * 1024
        assert growth < 8 * 1024 * 1024 + 40 * 1024 * 1024, growth


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def _cyclic() -> dict[str, Any]:
    value: dict[str, Any] = {"a": 1}
    value["self"] = value
    return value


_weird = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**53, max_value=2**200),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.binary(max_size=32),
    st.sampled_from(["\ud800", "a\udfffb", math.nan, math.inf, -math.inf]),
    st.builds(_Unprintable),
    st.builds(_cyclic),
    st.builds(object),
)
_extras = st.recursive(
    _weird,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), inner, max_size=3)
    ),
    max_leaves=10,
)


class TestBadInput:
    @settings(
        derandomize=True,
        deadline=None,
        max_examples=150,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(
        extras=st.dictionaries(
            st.text(min_size=1, max_size=6).filter(str.isidentifier), _extras, max_size=4
        ),
        message=st.text(),
    )
    def test_every_record_is_delivered_as_json_or_counted(
        self,
        server: EventsServer,
        make_handler: Any,
        logger: logging.Logger,
        extras: dict[str, Any],
        message: str,
    ) -> None:
        """Whatever its extras and message, a record arrives as JSON or is counted."""
        reserved = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
            "message",
            "asctime",
        }
        extras = {k: v for k, v in extras.items() if k not in reserved}
        handler = getattr(self, "_handler", None)
        if handler is None:
            handler = self._handler = make_handler(datasource="fuzz")
            logger.addHandler(handler)
        before = len(server.events("fuzz"))
        dropped_before = handler.stats().dropped
        logging.getLogger(logger.name).info(message, extra=extras)
        assert handler.flush(10) or handler.stats().dropped > dropped_before
        after = server.events("fuzz")
        assert len(after) - before + handler.stats().dropped - dropped_before == 1
        if len(after) > before:
            event = after[-1]
            for key in extras:
                assert key in event
            assert set(event["attributes"]) == set(extras)


class TestSecrets:
    def test_token_appears_nowhere(
        self,
        server: EventsServer,
        make_handler: Any,
        logger: logging.Logger,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """The token is in no repr, message, stats or URL: only its header."""
        secret = "p.eyJ1IjogInNlY3JldC10b2tlbiJ9"
        with EventsServer(token="other") as wrong:
            handler = make_handler(host=wrong.url, token=secret, datasource="secret_ds")
            logger.addHandler(handler)
            logger.info("x")
            handler.flush(5)
            texts = [
                repr(handler),
                str(handler),
                repr(handler.stats()),
                *reprs_reachable_from(handler),  # config, worker, transport, settings...
                capsys.readouterr().err,
            ]
            texts += [r.path for r in wrong.requests]
            assert "403" in texts[-2] or wrong.requests[0].status == 403
            for text in texts:
                assert secret not in text
            assert wrong.requests[0].headers["Authorization"] == f"Bearer {secret}"

    def test_token_not_in_exit_report(self) -> None:
        """The exit report never quotes the token."""
        secret = "p.very-secret-token-value"
        result = run_python(
            """
            import logging
            from tinybird_export import TinybirdHandler
            logging.getLogger().addHandler(TinybirdHandler(exit_timeout=0.5))
            logging.warning("x")
        """,
            {
                "TINYBIRD_HOST": closed_port_url(),
                "TINYBIRD_TOKEN": secret,
                "TINYBIRD_DATASOURCE": "ds",
            },
        )
        assert "not delivered" in result.stderr
        assert secret not in result.stderr + result.stdout


def reprs_reachable_from(root: object, depth: int = 6) -> list[str]:
    """The reprs of the package's objects reachable from ``root`` (what a traceback, a
    debugger or an error reporter capturing locals would print)."""
    seen: set[int] = set()
    found: list[str] = []
    layer = [root]
    for _ in range(depth):
        following = []
        for obj in layer:
            if id(obj) in seen or isinstance(obj, type | types.ModuleType | types.FunctionType):
                continue
            seen.add(id(obj))
            if type(obj).__module__.startswith("tinybird_export"):
                found.append(repr(obj))
            following.extend(gc.get_referents(obj))
        layer = following
    assert len(found) > 5, found  # the worker and its parts were reached
    return found


def redact(event: dict[str, Any]) -> dict[str, Any] | None:
    """A before_send hook for the tests, importable by dotted path."""
    if event.get("event") == "drop me":
        return None
    if "password" in event:
        event["password"] = "***"
        event["attributes"]["password"] = "***"
    return event


class TestTransport:
    def test_before_send_by_dotted_path_redacts_and_drops(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """before_send by dotted path redacts events and drops those it returns None for."""
        handler = make_handler(before_send="tests.test_faults:redact")
        logger.addHandler(handler)
        logger.info("login", extra={"password": "hunter2"})
        logger.info("drop me")
        assert handler.flush(10)
        (event,) = server.events()
        assert event["password"] == "***"
        assert event["attributes"]["password"] == "***"
        assert handler.stats().dropped_by_reason == {"before_send": 1}

    def test_before_send_that_raises_drops_and_counts(
        self, make_handler: Any, logger: logging.Logger
    ) -> None:
        """An event whose before_send raises is dropped, not sent unredacted."""

        def broken(event: dict[str, Any]) -> dict[str, Any]:
            raise ValueError("oops")

        handler = make_handler(before_send=broken)
        logger.addHandler(handler)
        logger.info("x")
        assert handler.stats().dropped_by_reason == {"before_send_error": 1}

    def test_http_proxy_is_honoured_and_no_proxy_bypasses(
        self, server: EventsServer, monkeypatch: pytest.MonkeyPatch, logger: logging.Logger
    ) -> None:
        """HTTP_PROXY is used for the host, and NO_PROXY bypasses it."""
        monkeypatch.setenv("HTTP_PROXY", server.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        via_proxy = TinybirdHandler(
            datasource="proxied", host="http://127.0.0.2:9", token=server.token
        )
        try:
            assert log_and_flush(via_proxy, logger, 1)
            assert server.requests[0].datasource == "proxied"
        finally:
            logger.removeHandler(via_proxy)  # a closed handler left attached would reopen
            via_proxy.close()
        monkeypatch.setenv("NO_PROXY", "127.0.0.3")
        direct = TinybirdHandler(
            datasource="direct",
            host="http://127.0.0.3:9",
            token=server.token,
            exit_timeout=0,
            flush_timeout=0.1,
        )
        try:
            logger.addHandler(direct)
            logger.info("x")
            assert direct.flush(0.5) is False
            assert re.search("cannot connect|refused", direct.stats().last_error)
        finally:
            direct.close()

    def test_a_ca_bundle_that_cannot_be_loaded_is_refused_at_construction(
        self, tmp_path: Any
    ) -> None:
        """The TLS context is built when the handler is made: a missing or non-PEM
        ca_bundle raises there, naming the setting (not a TLS failure at every attempt)."""
        (tmp_path / "not.pem").write_text("not a certificate")
        for bundle in (tmp_path / "missing.pem", tmp_path / "not.pem"):
            with pytest.raises(ValueError, match="'ca_bundle' .env TINYBIRD_CA_BUNDLE."):
                TinybirdHandler(
                    datasource="x", host="https://localhost:9", token="t", ca_bundle=str(bundle)
                )

    def test_tls_is_verified_against_the_ca_bundle_setting(
        self, tmp_path: Any, logger: logging.Logger
    ) -> None:
        """An https host is trusted through ca_bundle only: with its CA the batch arrives;
        with another CA, or the system's, the handshake fails and nothing is sent."""
        trustme = pytest.importorskip("trustme")
        ca, other = trustme.CA(), trustme.CA()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("localhost").configure_cert(context)
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        other.cert_pem.write_to_path(str(tmp_path / "other.pem"))
        with EventsServer(tls=context) as server:
            cases = [("ca.pem", True), ("other.pem", False), ("", False)]
            for bundle, delivered in cases:
                handler = TinybirdHandler(
                    datasource=f"tls_{bundle.partition('.')[0] or 'system'}",
                    host=server.url,
                    token=server.token,
                    ca_bundle=str(tmp_path / bundle) if bundle else None,
                    flush_timeout=0.5,
                    exit_timeout=0,
                )
                try:
                    assert log_and_flush(handler, logger, 1, timeout=2) is delivered, bundle
                    if not delivered:
                        assert "CERTIFICATE_VERIFY_FAILED" in handler.stats().last_error
                finally:
                    logger.removeHandler(handler)
                    handler.close()
            assert [r.datasource for r in server.requests] == ["tls_ca"]


class TestSynchronousMode:
    def test_background_false_sends_on_flush_without_a_thread(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """Serverless / uWSGI without threads: nothing runs between calls; flush() sends."""
        handler = make_handler(background=False, datasource="sync")
        logger.addHandler(handler)
        for i in range(10):
            logger.info("n %d", i)
        assert server.requests == []
        before = worker_threads()
        assert handler.flush(10)
        assert len(server.events("sync")) == 10
        assert worker_threads() <= before  # no thread of its own

    def test_background_false_flush_respects_its_timeout(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """background=False: flush(timeout) gives up in time."""
        server.respond(Reply(status=503, headers={"Retry-After": "30"}))
        handler = make_handler(background=False, datasource="sync_slow", flush_timeout=0.1)
        logger.addHandler(handler)
        logger.info("x")
        started = time.monotonic()
        assert handler.flush(0.5) is False
        assert time.monotonic() - started < 3

    def test_background_false_exit_delivers(self, server: EventsServer) -> None:
        """background=False: what is queued at exit is delivered by the drain."""
        result = run_python(
            """
            import logging
            from tinybird_export import TinybirdHandler
            log = logging.getLogger("app"); log.propagate = False
            log.addHandler(TinybirdHandler(background=False)); log.warning("at exit")
        """,
            child_env(server),
        )
        assert result.returncode == 0, result.stderr
        assert [e["event"] for e in server.events()] == ["at exit"]
