"""A producer's openings and closings: whether it is open has one owner (its channel, under
its lock), so a record racing with close() is sent (a handler reopens) or counted as
dropped, never lost; and what a flush reports covers every opening of the producer."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.helpers import RecordingTransport, make_channel, unit_config, unit_process
from tinybird_export._process import Process
from tinybird_export._producer import Producer
from tinybird_export._worker import Worker


def producer(process: Process, *, handler: bool = False, **settings: object) -> Producer:
    """A producer of ``process`` (no threads: flush sends on this thread); ``handler``: a
    logging handler's, which reopens when it gets records once closed."""
    return Producer(unit_config(**settings), "unit", flushed_by_logging=handler, process=process)


def close_inside_the_offer(monkeypatch: pytest.MonkeyPatch, target: Producer) -> None:
    """Make the next ``Channel.offer`` of ``target``'s channel close ``target`` first: the
    record read the open channel, and another thread closed the producer before the line
    reached the queue (a second dictConfig while a thread logs)."""
    channel = target.channel
    original = channel.offer

    def offer(line: bytes, flags: int = 0, level: int = 0) -> bool | None:
        monkeypatch.setattr(channel, "offer", original)  # once
        target.close(1)
        return original(line, flags, level)

    monkeypatch.setattr(channel, "offer", offer)


def test_a_record_racing_with_close_reopens_the_handler_and_is_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A handler closed between a record's read of its channel and the queue: the record
    goes to the reopened channel and is delivered; flush() is True (it was False forever:
    the record sat in a detached channel no worker served)."""
    transport = RecordingTransport()
    handler = producer(unit_process(transport), handler=True)
    handler.put({"event": "before"})
    assert handler.flush(5) is True
    close_inside_the_offer(monkeypatch, handler)
    handler.put({"event": "racing"})
    handler.put({"event": "after"})
    assert handler.flush(1) is True
    assert transport.lines() == [b'{"event":"before"}', b'{"event":"racing"}', b'{"event":"after"}']
    stats = handler.stats()
    assert (stats.emitted, stats.sent, stats.queued, stats.dropped) == (3, 3, 0, 0)


def test_a_record_racing_with_close_of_a_sender_is_counted_as_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An event sender closed while an event was on its way to the queue: the event is
    counted as dropped ('closed'), not left in a detached channel."""
    sender = producer(unit_process(RecordingTransport()))
    close_inside_the_offer(monkeypatch, sender)
    sender.put({"event": "racing"})
    stats = sender.stats()
    assert (stats.emitted, stats.queued, dict(stats.dropped_by_reason)) == (1, 0, {"closed": 1})
    assert stats.accounted()


def test_a_closed_channel_refuses_under_its_lock_without_counting() -> None:
    """The channel says it is closed (None) and leaves the counting to its producer, which
    knows whether to reopen or count it as closed."""
    channel = make_channel()
    channel.close(0.0)
    assert channel.offer(b"x") is None
    assert channel.stats().emitted == 0 and channel.empty()


def test_records_from_other_threads_during_a_reopen_are_parked_then_queued(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While one thread reopens a closed handler (held inside attach), four others log
    200 records: none of them waits for the reopen, and every record is delivered, once."""
    transport = RecordingTransport()
    process = unit_process(transport)
    handler = producer(process, handler=True)
    handler.close(1)
    inside, go_on = threading.Event(), threading.Event()
    attach = process.attach

    def held_attach(*args: Any, **kwargs: Any) -> Worker:
        inside.set()
        assert go_on.wait(10)
        return attach(*args, **kwargs)

    monkeypatch.setattr(process, "attach", held_attach)
    reopener = threading.Thread(target=handler.put, args=({"event": "reopens"},))
    reopener.start()
    assert inside.wait(10)

    def log(thread: int) -> None:
        for n in range(50):
            handler.put({"thread": thread, "n": n})

    others = [threading.Thread(target=log, args=(i,)) for i in range(4)]
    try:
        for thread in others:
            thread.start()
        for thread in others:
            thread.join(10)
        assert not any(thread.is_alive() for thread in others)  # none waited for the reopen
    finally:
        go_on.set()  # a failing run must not leave threads blocked
        reopener.join(10)
    assert handler.flush(5) is True
    assert len(transport.lines()) == len(set(transport.lines())) == 201
    stats = handler.stats()
    assert (stats.emitted, stats.sent) == (201, 201)
