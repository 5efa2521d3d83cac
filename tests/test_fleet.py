"""A fleet under one rate limit: pacing that reacts to 429 and to a low X-RateLimit-Remaining
and recovers, and backpressure that keeps the errors. Not timed: bench/fleet.py measures."""

from __future__ import annotations

import logging
import math
import random
import time
from typing import Any

import pytest

from tinybird_export._pacing import MAX_SPACING, Pacing
from tinybird_export.testing import EventsServer, Reply

LOW = {"x-ratelimit-limit": "100", "x-ratelimit-remaining": "10"}
SPENT = {"x-ratelimit-limit": "100", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "1"}
ROOM = {"x-ratelimit-limit": "100", "x-ratelimit-remaining": "90"}


class TestPacing:
    """The rules of ``_pacing``, on a fake clock (``now`` is given, nothing sleeps)."""

    def test_429_doubles_from_the_interval_and_is_capped(self) -> None:
        """Each 429 doubles the spacing from flush_interval, up to the cap."""
        pacing = Pacing(1.0, enabled=True)
        assert pacing.spacing == 0
        spacings = []
        for _ in range(8):
            pacing.answered(429, {}, 0.0)
            spacings.append(pacing.spacing)
        assert spacings[:4] == [1.0, 2.0, 4.0, 8.0]
        assert max(spacings) == MAX_SPACING

    def test_a_low_remaining_slows_down_before_any_429(self) -> None:
        """A low X-RateLimit-Remaining grows the spacing before any 429."""
        pacing = Pacing(1.0, enabled=True)
        pacing.answered(202, LOW, 0.0)
        assert pacing.spacing == 1.0
        pacing.answered(202, LOW, 0.0)
        assert pacing.spacing == 1.5
        pacing.answered(202, {"x-ratelimit-limit": "100", "x-ratelimit-remaining": "30"}, 0.0)
        assert pacing.spacing == 1.5  # between a fifth and a half: hold

    @pytest.mark.parametrize("headers", [{}, ROOM], ids=["no headers", "room to spare"])
    def test_recovery_halves_back_as_fast_as_429s_doubled(self, headers: dict[str, str]) -> None:
        """Issue 24: a tenth of the interval per acknowledgement took hours from 32 s."""
        pacing = Pacing(1.0, enabled=True)
        for _ in range(6):
            pacing.answered(429, {}, 0.0)
        assert pacing.spacing == 32.0
        spacings = []
        for _ in range(7):
            pacing.answered(202, headers, 0.0)
            spacings.append(round(pacing.spacing, 6))
        # Halved down to the flush interval, then probed gently back to no pacing.
        assert spacings == [16.0, 8.0, 4.0, 2.0, 1.0, 0.9, 0.8]

    def test_recovery_stops_halving_at_the_pace_held_before_the_429s(self) -> None:
        """A fleet near the limit keeps what it learnt: room after 429s brings a lane back
        to the spacing it held steadily before them, not below."""
        pacing = Pacing(1.0, enabled=True)
        for headers in (LOW, LOW, LOW):  # the fleet nears the limit: 1, 1.5, 2.25
            pacing.answered(202, headers, 0.0)
        pacing.answered(202, {"x-ratelimit-limit": "100", "x-ratelimit-remaining": "30"}, 0.0)
        for _ in range(3):
            pacing.answered(429, {}, 0.0)
        assert pacing.spacing == 18.0
        for _ in range(3):
            pacing.answered(202, ROOM, 0.0)
        assert pacing.spacing == 2.25  # 9, 4.5, 2.25: the steady pace
        pacing.answered(202, ROOM, 0.0)
        assert pacing.spacing == pytest.approx(2.15)  # below it: a tenth at a time

    @pytest.mark.parametrize("headers", [{}, ROOM], ids=["no headers", "room to spare"])
    def test_alternating_429_and_room_does_not_climb(self, headers: dict[str, str]) -> None:
        """Issue 24: alternating answers climbed to 25.8 s (and on, to the cap)."""
        pacing = Pacing(1.0, enabled=True)
        highest = 0.0
        for _ in range(200):
            pacing.answered(429, {}, 0.0)
            highest = max(highest, pacing.spacing)
            pacing.answered(202, headers, 0.0)
        assert highest <= 2.0

    def test_a_spent_window_holds_until_its_reset_and_never_reaches_the_cap(self) -> None:
        """Issue 24: ``Remaining: 0`` on every 202 drove the spacing to 60 s."""
        pacing = Pacing(1.0, enabled=True)
        now = 0.0
        for _ in range(200):
            pacing.started(now)
            pacing.answered(202, SPENT, now + 0.01)
            # Every request, even a full batch, waits for the window to reset...
            assert pacing.not_before(full_batch=True) == pytest.approx(now + 1.01)
            now = pacing.not_before()
        # ...and the spacing grows by half, to four flush intervals: only 429s slow further.
        assert pacing.spacing == 4.0
        assert pacing.interval(1.0) == 4.0

    @pytest.mark.parametrize("reset", ["1e9", "5", "nan", "-1e308"])
    def test_a_long_or_bogus_reset_is_no_hold(self, reset: str) -> None:
        """A reset far away, or not a number, holds nothing and leaves the spacing alone."""
        pacing = Pacing(1.0, enabled=True)
        pacing.answered(202, {**SPENT, "x-ratelimit-reset": reset}, 100.0)
        assert pacing.not_before(full_batch=True) <= 100.0
        assert pacing.spacing == 1.0

    def test_a_full_batch_waits_for_no_spacing(self) -> None:
        """The spacing of 429s holds partial batches only; a full batch is not paced."""
        pacing = Pacing(1.0, enabled=True)
        pacing.started(100.0)
        for _ in range(5):
            pacing.answered(429, {}, 100.0)
        assert pacing.not_before() == 116.0  # a partial batch: 16 s after the last start
        assert pacing.not_before(full_batch=True) < 100.0  # a full one: not paced at all
        assert pacing.interval(1.0) == 16.0

    def test_bogus_headers_and_other_answers_change_nothing(self) -> None:
        """Bogus rate-limit headers and other statuses leave the spacing alone."""
        pacing = Pacing(1.0, enabled=True)
        for headers in (
            {"x-ratelimit-limit": "nan", "x-ratelimit-remaining": "0"},
            {"x-ratelimit-limit": "0", "x-ratelimit-remaining": "0"},
            {"x-ratelimit-limit": "ten", "x-ratelimit-remaining": "0"},
        ):
            pacing.answered(202, headers, 0.0)
        pacing.answered(503, {}, 0.0)
        pacing.answered(None, {}, 0.0)
        assert pacing.spacing == 0

    def test_disabled_never_paces(self) -> None:
        """adaptive=False: no spacing, whatever the server says."""
        pacing = Pacing(1.0, enabled=False)
        pacing.answered(429, {}, 0.0)
        pacing.answered(202, SPENT, 0.0)
        assert pacing.spacing == 0
        assert pacing.not_before(full_batch=True) == pacing.not_before() == -math.inf


def log_until_sent(handler: Any, logger: logging.Logger, count: int) -> None:
    logger.addHandler(handler)
    for i in range(count):
        logger.info("n %d", i)
        assert handler.flush(20)


class TestAdaptiveLanes:
    def test_429_paces_the_data_source_and_acks_bring_it_back(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """429s pace the data source; acknowledged requests bring it back."""
        server.script(Reply(status=429, headers={"Retry-After": "0"}))
        handler = make_handler(datasource="paced", flush_interval=0.1)
        log_until_sent(handler, logger, 1)
        assert handler.stats().send_interval == pytest.approx(0.1)  # spacing 0.1, then 0.09
        server.script(*[Reply(status=429, headers={"Retry-After": "0"})] * 3)
        log_until_sent(handler, logger, 1)
        # Doubled on each 429 (0.18, 0.36, 0.72), halved by the 202 that followed.
        assert handler.stats().send_interval == pytest.approx(0.36)
        log_until_sent(handler, logger, 3)  # halved back to the flush interval (_pacing)
        assert handler.stats().send_interval == pytest.approx(0.1)
        assert [e["event"] for e in server.events("paced")] == [
            "n 0",
            "n 0",
            *(f"n {i}" for i in range(3)),
        ]

    def test_a_full_batch_does_not_wait_for_the_pacing(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """Issue 24: a full batch waited for the spacing too, so that at a high rate the
        memory bound filled and events were dropped while the server accepted everything."""
        server.script(Reply(status=429, headers={"Retry-After": "0"}))
        handler = make_handler(datasource="full", flush_interval=30, batch_max_rows=10)
        logger.addHandler(handler)
        for i in range(10):  # a full batch: sent at once, refused; the spacing is now 30 s
            logger.info("n %d", i)
        assert server.wait_for(lambda: len(server.requests) == 1, 10)
        for i in range(10, 20):  # another full batch
            logger.info("n %d", i)
        # Both go as soon as the 429's pause (0.5 s) ends, not 30 s after the last start.
        assert server.wait_for(lambda: len(server.events("full")) == 20, 10)
        assert [r.status for r in server.requests] == [429, 202, 202]
        assert [e["event"] for e in server.events("full")] == [f"n {i}" for i in range(20)]

    def test_a_low_remaining_paces_without_a_429(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """A low X-RateLimit-Remaining paces the data source before any 429."""
        low = {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "3"}
        server.respond(Reply(headers=low))
        handler = make_handler(datasource="early", flush_interval=0.05)
        log_until_sent(handler, logger, 3)
        assert handler.stats().send_interval > 0.05
        assert [r.status for r in server.requests] == [202, 202, 202]

    def test_adaptive_false_keeps_todays_behaviour(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """adaptive=False keeps flush_interval through 429s."""
        server.script(*[Reply(status=429, headers={"Retry-After": "0"})] * 2)
        handler = make_handler(datasource="fixed", flush_interval=0.1, adaptive=False)
        log_until_sent(handler, logger, 1)
        assert handler.stats().send_interval == 0.1

    def test_one_process_under_a_real_limit_loses_nothing(self, make_handler: Any) -> None:
        """A token bucket at 5 requests/s against a handler flushing every 10 ms."""
        with EventsServer(rate_limit=5) as limited:
            handler = make_handler(host=limited.url, datasource="bucket", flush_interval=0.01)
            log = logging.getLogger("bucket")
            log.propagate = False
            log.addHandler(handler)
            for i in range(300):
                log.warning("n %d", i)
                time.sleep(0.002)  # pacing the producer over ~1 s, not synchronising
            assert handler.flush(30)
            log.removeHandler(handler)
            assert sorted(e["event"] for e in limited.events("bucket")) == sorted(
                f"n {i}" for i in range(300)
            )
            assert handler.stats().dropped == 0
            # Each answer that spent the window (Remaining 0, Reset 1) held the lane until
            # the window reset: no request was refused (there was one before issue 24).
            assert [r.status for r in limited.requests].count(429) == 0


class TestSeverityBackpressure:
    def fill(self, handler: Any, logger: logging.Logger, level: int, count: int) -> None:
        logger.addHandler(handler)
        for i in range(count):
            logger.log(level, "%s %04d %s", logging.getLevelName(level), i, "x" * 200)

    def test_errors_displace_lower_levels_during_an_outage(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """During an outage errors displace lower levels; every ERROR is delivered."""
        server.respond(Reply(status=503))
        # Small batches: the one in flight (never displaced) is a small part of the bound.
        handler = make_handler(
            datasource="outage",
            queue_max_bytes=60_000,
            batch_max_bytes=5_000,
            max_event_bytes=2_000,
        )
        self.fill(handler, logger, logging.INFO, 1000)
        assert handler.stats().dropped_by_reason["queue_full"] > 700  # the bound is reached
        # About 100 such lines fit in the bound: room for these, not for more INFO.
        self.fill(handler, logger, logging.WARNING, 40)
        self.fill(handler, logger, logging.ERROR, 50)
        stats = handler.stats()
        assert stats.emitted == stats.sent + stats.dropped + stats.queued + stats.in_flight
        assert stats.dropped_by_level.get("ERROR", 0) == 0
        assert stats.dropped_by_level["INFO"] > 0
        server.respond(Reply())
        assert handler.flush(30) is False  # delivered, but some were dropped at the bound
        delivered = [e["level"] for e in server.events("outage")]
        assert delivered.count("ERROR") == 50
        assert delivered.count("WARNING") + stats.dropped_by_level.get("WARNING", 0) == 40
        assert sum(handler.stats().dropped_by_level.values()) == handler.stats().dropped

    def test_with_only_errors_left_the_newest_error_is_dropped(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """With only errors queued, the newest error is dropped; the oldest kept."""
        server.respond(Reply(status=503))
        handler = make_handler(
            datasource="errors",
            queue_max_bytes=20_000,
            batch_max_bytes=10_000,
            max_event_bytes=5_000,
        )
        self.fill(handler, logger, logging.ERROR, 200)
        stats = handler.stats()
        assert stats.dropped_by_level["ERROR"] == stats.dropped > 0
        server.respond(Reply())
        assert handler.flush(30) is False  # delivered, but some were dropped at the bound
        errors = [e["event"].split()[1] for e in server.events("errors")]
        assert errors == sorted(errors) and errors[0] == "0000"  # oldest kept, in order

    def test_an_error_at_a_bound_full_of_errors_costs_what_any_call_costs(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """An outage during which the app logs only errors: each new one looked for lower
        lines to displace by splitting the whole queue (8.5 ms a call at 16 MiB)."""
        server.respond(Reply(status=503))
        handler = make_handler(
            datasource="full",
            queue_max_bytes=4 << 20,
            batch_max_bytes=64_000,  # many batches wait, as during a long outage
            max_event_bytes=8_000,
            flush_interval=60,
        )
        logger.addHandler(handler)

        def seconds_per_call() -> float:  # the best of 5 runs of 100 calls
            runs = []
            for _ in range(5):
                started = time.perf_counter()
                for i in range(100):
                    logger.error("boom %d %s", i, "x" * 300)
                runs.append((time.perf_counter() - started) / 100)
            return min(runs)

        below = seconds_per_call()  # under the bound: the plain cost of a call
        while not handler.stats().dropped_by_reason.get("queue_full"):
            self.fill(handler, logger, logging.ERROR, 1000)
        at_bound = seconds_per_call()
        assert at_bound < 20 * below, (at_bound, below)  # was about 300 times
        stats = handler.stats()
        assert stats.dropped_by_level["ERROR"] == stats.dropped > 0

    def test_events_keep_the_plain_policy_unless_given_a_level(
        self, server: EventsServer, make_events: Any
    ) -> None:
        """Events without a level keep the newest-dropped policy; with one, displace."""
        server.respond(Reply(status=503))
        events = make_events(
            datasource="plain",
            queue_max_bytes=20_000,
            batch_max_bytes=10_000,
            max_event_bytes=5_000,
        )
        for i in range(200):
            events.send({"event": f"view {i:04d}", "pad": "x" * 200})
        dropped = events.stats().dropped
        events.send({"event": "alert", "pad": "x" * 200})  # no level: dropped too
        assert events.stats().dropped == dropped + 1
        events.send({"event": "alert", "pad": "x" * 200}, level=logging.ERROR)
        assert events.stats().dropped > dropped + 1  # views displaced, the alert kept
        assert events.stats().dropped_by_level == {}  # the views had no level
        server.respond(Reply())
        assert events.flush(30) is False  # delivered, but some were dropped at the bound
        assert [e["event"] for e in server.events("plain")].count("alert") == 1

    def test_the_invariant_holds_throughout(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """While the endpoint flaps, the counters agree at every step."""
        rng = random.Random(11)
        handler = make_handler(
            datasource="flapping",
            queue_max_bytes=40_000,
            batch_max_bytes=8_000,
            max_event_bytes=5_000,
            flush_interval=0.01,
        )
        logger.addHandler(handler)
        levels = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
        for step in range(3000):
            if step % 300 == 0:  # the endpoint flaps
                server.respond(Reply(status=503) if step % 600 == 0 else Reply())
            logger.log(rng.choice(levels), "%d %s", step, "y" * rng.randrange(0, 400))
            if step % 50 == 0:
                s = handler.stats()
                assert s.emitted == s.sent + s.dropped + s.queued + s.in_flight, s
        server.respond(Reply())
        handler.flush(30)
        s = handler.stats()
        assert s.emitted == 3000 == s.sent + s.dropped + s.queued + s.in_flight
        assert s.queued == s.in_flight == 0
        assert len(server.events("flapping")) == s.sent
