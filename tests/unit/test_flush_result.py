"""What flush() returns: True only when everything handed over since the previous flush
returned was acknowledged; a drop, before the call or during it, says False once, and a
later round that is all acknowledged says True again. Each caller (a producer, the
process-wide flush) keeps its own "since the previous flush"."""

from __future__ import annotations

import pytest

from tests.helpers import RecordingTransport, accepted, answered, unit_config, unit_process
from tinybird_export._client import Attempt
from tinybird_export._flush_round import FlushRound
from tinybird_export._process import Process
from tinybird_export._producer import Producer
from tinybird_export._tally import LossWatch


def producer(process: Process, **settings: object) -> Producer:
    """A producer of ``process`` (no threads: flush sends on this thread)."""
    return Producer(unit_config(**settings), "unit", process=process)


def send_now(process: Process) -> None:
    """Send what is queued, on this thread, without a flush."""
    worker = process.workers()[0]
    worker.hurry()
    worker.drain(10**9)


def test_a_drop_before_the_call_makes_the_next_flush_false_once() -> None:
    """Events dropped (404) before flush() is called: it says False; the next round,
    all acknowledged, says True."""
    transport = RecordingTransport(answered(404), default=accepted())
    process = unit_process(transport)
    sender = producer(process)
    sender.put({"event": "dropped"})
    send_now(process)  # sent (and dropped) before any flush
    assert sender.stats().dropped_by_reason == {"http_404": 1}
    assert sender.flush(5) is False
    sender.put({"event": "delivered"})
    assert sender.flush(5) is True
    assert sender.flush(5) is True  # nothing new: still all acknowledged


def test_a_drop_during_the_round_makes_it_false() -> None:
    """A batch dropped while the flush waits: False."""
    process = unit_process(RecordingTransport(answered(400)))
    sender = producer(process)
    sender.put({"event": "x"})
    assert sender.flush(5) is False


def test_refusals_at_the_bound_make_it_false() -> None:
    """Events refused at the memory bound (queue_full) were dropped: False."""
    process = unit_process(RecordingTransport())
    sender = producer(process, queue_max_events=2)
    for i in range(5):
        sender.put({"event": i})
    assert sender.stats().dropped_by_reason == {"queue_full": 3}
    assert sender.flush(5) is False
    assert sender.flush(5) is True


def test_what_the_application_filtered_out_is_not_a_failure() -> None:
    """before_send returning None drops the event by the application's choice: True."""
    process = unit_process(RecordingTransport())
    sender = producer(process, before_send=lambda event: None if event["skip"] else event)
    sender.put({"skip": True})
    sender.put({"skip": False})
    assert sender.stats().dropped_by_reason == {"before_send": 1}
    assert sender.flush(5) is True


def test_each_caller_keeps_its_own_round() -> None:
    """The process-wide flush and a producer's flush each report a drop once, to their
    own caller."""
    transport = RecordingTransport(answered(403), default=accepted())
    process = unit_process(transport)
    sender = producer(process)
    sender.put({"event": "dropped"})
    send_now(process)
    assert process.flush(5) is False
    assert process.flush(5) is True
    assert sender.flush(5) is False  # its own round had not seen the drop yet
    assert sender.flush(5) is True


def test_a_flush_that_times_out_is_false_and_the_drop_is_still_said() -> None:
    """A round not reached in time is False; what it was waiting for, dropped later,
    makes the next one False too."""
    transport = RecordingTransport(answered(503), answered(404), default=accepted())
    process = unit_process(transport)
    sender = producer(process)
    sender.put({"event": "x"})
    assert sender.flush(0) is False  # 503: retried later, not reached
    send_now(process)  # after the pause: 404, dropped
    assert sender.stats().dropped_by_reason == {"http_404": 1}
    assert sender.flush(5) is False
    assert sender.flush(5) is True


def test_making_due_is_not_a_flush() -> None:
    """make_due() (the metric exporter's wake-up of its four data sources) sends nothing
    itself and ends no round: the next flush still reports an earlier drop."""
    process = unit_process(RecordingTransport(answered(404), default=accepted()))
    sender = producer(process)
    sender.put({"event": "dropped"})
    send_now(process)
    sender.put({"event": "queued"})
    sender.make_due()
    assert sender.stats().queued == 1
    assert sender.flush(5) is False


@pytest.mark.parametrize(
    ("answer", "close_wait", "reason"),
    [(answered(503), 0.0, "close_timeout"), (answered(404), 5.0, "http_404")],
    ids=["given up at the close deadline", "dropped during the close's flush"],
)
def test_a_reopened_handler_reports_what_its_earlier_opening_dropped(
    answer: Attempt, close_wait: float, reason: str
) -> None:
    """A handler's earlier opening dropped events, at its close deadline (503 until then)
    or while close() flushed (404); it reopens on a later record: its next flush says
    False. The earlier queue is empty now (it was left out of the round: True), and
    close() returns nothing (its round had taken the 404 as seen: True)."""
    transport = RecordingTransport(accepted(), answer, default=accepted())
    process = unit_process(transport)
    handler = Producer(unit_config(), "unit", flushed_by_logging=True, process=process)
    handler.put({"event": "delivered"})
    assert handler.flush(5) is True
    handler.put({"event": "dropped"})
    handler.close(close_wait)
    assert handler.stats().dropped_by_reason == {reason: 1}
    handler.put({"event": "reopens"})
    assert handler.flush(5) is False
    assert handler.flush(5) is True


def test_the_process_flush_reports_what_a_producer_closed_since_dropped() -> None:
    """A producer closed since the previous process-wide flush dropped events (404): the
    next process-wide flush says False, though that producer is detached now."""
    transport = RecordingTransport(answered(404), default=accepted())
    process = unit_process(transport)
    kept = producer(process, datasource="kept")
    assert process.flush(5) is True
    job = producer(process, datasource="job")
    job.put({"event": "dropped"})
    job.close(5)
    assert job.stats().dropped_by_reason == {"http_404": 1}
    kept.put({"event": "delivered"})
    assert process.flush(5) is False
    assert process.flush(5) is True


def test_two_overlapping_flushes_both_report_a_drop_during_them() -> None:
    """Two threads' flushes of one producer overlap and an event is dropped meanwhile: the
    first to return says False, and so does the other (it used to find the drop consumed,
    and said True)."""
    watch = LossWatch()
    first, second = FlushRound([], watch), FlushRound([], watch)
    watch.lost()
    assert second.result(True) is False
    assert first.result(True) is False
    assert FlushRound([], watch).result(True) is True  # said by both; the next one is clean
