"""Counters that can fail: emitted is counted where an event enters, on every path by which
a producer gets one, and stats() checks emitted == sent + dropped + queued + in_flight +
spooled, so an event lost between two counters is caught, as a test here shows."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import RecordingTransport, make_channel, unit_config, unit_process
from tinybird_export import TinybirdHandler
from tinybird_export._batch import Batch
from tinybird_export._channel import Channel
from tinybird_export._producer import Producer
from tinybird_export.stats import total

_steps = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "offer",
                "take",
                "sent",
                "retry",
                "split",
                "drop",
                "spill",
                "refuse",
                "park",
                "drop_line",
                "abandon",
            ]
        ),
        st.integers(0, 50),
    ),
    max_size=80,
)


@settings(derandomize=True, deadline=None, max_examples=300)
@given(steps=_steps)
def test_the_invariant_holds_whatever_happens(steps: list[tuple[str, int]]) -> None:
    """Offers at a small bound (some displacing), claims, every answer (a 400's line
    dropped alone, a piece parked), the spool's hand-off, refusals and giving up with an
    answer still to come, in any order: the counters agree after each step."""
    channel = make_channel(rows=3, nbytes=300, max_bytes=400, max_events=8)
    in_flight: Batch | None = None
    for step, n in steps:
        if step == "offer":
            channel.offer(b"x" * n, level=n % 5 * 10)
        elif step == "refuse":
            channel.refuse("before_send")
        elif step == "take" and in_flight is None:
            got = channel.take(time.monotonic(), 1.0, n % 2 == 0)
            in_flight = got if isinstance(got, Batch) else None
        elif step == "spill":
            batch = channel.take_for_spool(n % 2 == 0)
            if batch is not None:
                channel.spooled(batch)
                channel.unspooled(batch.count, own=True, sent=n % 3 == 0, reason="http_400")
        elif step == "abandon":
            channel.abandon("exit_timeout")
            if in_flight is not None and n % 2:  # its answer comes after all
                channel.sent(in_flight, quarantined=0, wire_bytes=0)
            in_flight = None
        elif in_flight is not None:
            if step == "park":
                channel.park(in_flight, "400")
            elif step == "drop_line" and in_flight.count > 1:
                channel.drop_line(in_flight, n % in_flight.count, "http_400", "400")
            elif step == "sent":
                channel.sent(in_flight, quarantined=0, wire_bytes=0)
            elif step == "retry":
                channel.retry(in_flight, "503")
            elif step == "split" and in_flight.count > 1:
                channel.split(in_flight)
            else:
                channel.dropped(in_flight, "http_403", requested=True)
            in_flight = None
        assert channel.stats().accounted()
    channel.abandon("exit_timeout")
    stats = channel.stats()
    assert stats.queued == stats.in_flight == stats.queued_bytes == 0 and stats.accounted()


def test_the_check_fails_when_a_counter_is_skipped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A drop that forgets to count itself (a bug) breaks the invariant, which stats()
    checks: said once on stderr, and the snapshot is still returned (a monitoring endpoint
    that calls stats() must not get an AssertionError)."""
    channel = make_channel(max_events=1)
    original = Channel.refuse

    def forgets_the_drop(self: Channel, reason: str, count: int = 1) -> None:
        original(self, reason, count)
        self._tally.dropped[reason] -= count  # the bug: the drop is not counted

    channel.offer(b"queued")
    channel.offer(b"dropped at the bound")
    assert channel.stats().accounted()
    monkeypatch.setattr(Channel, "refuse", forgets_the_drop)
    channel.refuse("disabled")
    broken = channel.stats()
    assert not broken.accounted() and broken.emitted == 3
    channel.stats()
    err = capsys.readouterr().err
    assert err.count("an event went uncounted") == 1 and "emitted=3" in err


def test_an_event_is_counted_once_even_if_offered_while_another_offer_runs() -> None:
    """A signal handler's offer inside another: parked, counted as emitted and queued
    while parked, and not counted again once queued."""
    channel = make_channel()

    class Interrupting(bytes):
        def __len__(self) -> int:  # runs inside the outer offer, with its lock held
            if not channel.stats().queued:
                channel.offer(b"from the signal handler")
            return super().__len__()

    channel.offer(Interrupting(b"outer"))
    assert channel.stats().emitted == 2
    channel.take(time.monotonic(), 1.0, True)
    assert channel.stats().emitted == 2 and channel.stats().accounted()


def test_every_way_a_producer_gets_an_event_is_counted_as_emitted() -> None:
    """Queued, or refused for any reason (disabled, closed, too large, before_send
    dropping or raising, unreadable): each is emitted once, and dropped by its reason."""
    process = unit_process(RecordingTransport())

    def hook(event: dict[str, Any]) -> dict[str, Any] | None:
        if event.get("drop"):
            return None
        if event.get("raise"):
            raise ValueError("hook bug")
        return event

    producer = Producer(unit_config(before_send=hook), "unit", process=process)
    producer.put({"ok": 1})
    producer.put({"drop": 1})
    producer.put({"raise": 1})
    producer.offer(None)  # too large even when truncated
    producer.refuse_unreadable(object(), RuntimeError("unreadable"))
    producer.refuse("error")
    producer.close(0)
    producer.put({"late": 1})
    disabled = Producer(unit_config(enabled=True, token=None), "unit", process=process)
    disabled.put({"ok": 1})
    stats = producer.stats()
    assert stats.emitted == 7 and stats.accounted()
    assert stats.dropped_by_reason == {
        "before_send": 1,
        "before_send_error": 1,
        "too_large": 1,
        "unreadable": 1,
        "error": 1,
        "closed": 1,
        "close_timeout": 1,
    }
    assert disabled.stats().dropped_by_reason == {"disabled": 1}
    assert disabled.stats().emitted == 1


def test_a_handlers_refusals_are_counted_as_emitted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record created on a sending thread (recursion) and one whose emit fails (error)
    both entered the handler: counted, with their reasons."""
    handler = TinybirdHandler(datasource="x", enabled=False)
    record = logging.makeLogRecord({"msg": "x"})
    from tinybird_export._process import PROCESS

    with PROCESS.sending.marked():
        handler.handle(record)

    def broken(record: logging.LogRecord, max_bytes: int) -> Any:
        raise RuntimeError("mapper bug")

    monkeypatch.setattr(handler._mapper, "encode", broken)
    monkeypatch.setattr(logging, "raiseExceptions", False)
    handler.handle(record)
    stats = handler.stats()
    assert stats.emitted == 2 and stats.dropped_by_reason == {"recursion": 1, "error": 1}
    handler.close()


def test_spans_exported_after_shutdown_are_counted() -> None:
    """The SDK may export to a shut-down exporter: FAILURE, and the spans are counted as
    closed, not lost in silence."""
    otel = pytest.importorskip("tinybird_export.otel")
    exporter = otel.TinybirdSpanExporter(enabled=False)
    exporter.shutdown()
    export = cast(Callable[[list[object]], object], exporter.export)
    assert export([]) == otel.SpanExportResult.FAILURE
    assert exporter.stats().dropped_by_reason == {}  # nothing handed over: nothing counted
    assert export([object(), object()]) == otel.SpanExportResult.FAILURE
    stats = exporter.stats()
    assert stats.emitted == 2 and stats.dropped_by_reason == {"closed": 2}


def test_total_adds_snapshots_up_and_keeps_the_invariant() -> None:
    """stats.total: counts added, drop reasons merged, the spool directory's counters and
    the send interval at their largest, the last error set; the sum is accounted too."""
    first, second = make_channel("a"), make_channel("b", interval=5.0)
    for channel in (first, second):
        channel.offer(b"x")
        channel.refuse("before_send")
    second.refuse("queue_full", 2)
    batch = first.take(time.monotonic(), 1.0, True)
    assert isinstance(batch, Batch)
    first.dropped(batch, "http_404", "it said 404", requested=True)
    parts = [first.stats(), dataclasses.replace(second.stats(), spool_bytes=7, spool_corrupt=1)]
    summed = total(parts)
    assert (summed.emitted, summed.dropped, summed.queued) == (6, 5, 1)
    assert summed.dropped_by_reason == {"before_send": 2, "http_404": 1, "queue_full": 2}
    assert (summed.spool_bytes, summed.spool_corrupt, summed.send_interval) == (7, 1, 5.0)
    assert summed.last_error == "it said 404" and summed.accounted()
    assert total([]).emitted == 0
