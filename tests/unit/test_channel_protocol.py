"""The channel's protocol: batches keep order and limits, each is resolved exactly once, and
an offer re-entered on the same thread (a signal handler, ``__del__``) is kept, not lost."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import make_channel
from tinybird_export._batch import Batch
from tinybird_export._channel import Channel

_lines = st.lists(st.binary(min_size=1, max_size=300).map(lambda b: b.replace(b"\n", b" ")))


def channel(rows: int = 1000, nbytes: int = 1 << 20) -> Channel:
    """A channel of batches of ``rows`` rows and ``nbytes`` bytes at most."""
    return make_channel(rows=rows, nbytes=nbytes)


def take_all(ch: Channel) -> list[Batch]:
    """Every batch, as a sender at exit would take them (each acknowledged in turn)."""
    batches = []
    while isinstance(batch := ch.take(time.monotonic(), 1.0, True), Batch):
        batches.append(batch)
        assert ch.sent(batch, quarantined=0, wire_bytes=0)
    return batches


@settings(derandomize=True, deadline=None, max_examples=200)
@given(lines=_lines, rows=st.integers(1, 20), nbytes=st.integers(1024, 4096))
def test_batches_keep_order_and_limits(lines: list[bytes], rows: int, nbytes: int) -> None:
    """Lines come out in order, in batches within the row and byte limits."""
    ch = channel(rows, nbytes)
    for line in lines:
        ch.offer(line)
    assert ch.stats().queued == len(lines)
    batches = take_all(ch)
    assert b"".join(b.body for b in batches) == b"".join(line + b"\n" for line in lines)
    for batch in batches:
        assert 1 <= batch.count <= rows
        assert batch.nbytes <= nbytes
        assert batch.body.count(b"\n") == batch.count
    assert ch.stats().sent == len(lines)
    assert ch.empty()


@settings(derandomize=True, deadline=None, max_examples=200)
@given(lines=_lines.filter(lambda x: len(x) > 1))
def test_halves_split_on_a_line_boundary(lines: list[bytes]) -> None:
    """A 413's halves split at a line boundary, and put together give the batch."""
    body = b"".join(line + b"\n" for line in lines)
    first, second = Batch(bytearray(body), len(lines)).halves()
    assert first.count >= 1 and second.count >= 1
    assert first.count + second.count == len(lines)
    assert bytes(first.body) + bytes(second.body) == body
    assert first.body.endswith(b"\n") and second.body.endswith(b"\n")


def test_offer_wakes_on_first_line_and_on_a_sealed_batch() -> None:
    """An offer wakes the worker for a new partial batch and a sealed one only."""
    ch = channel(3)
    assert ch.offer(b"a") is True  # arms the interval timer
    assert ch.offer(b"b") is False
    assert ch.offer(b"c") is True  # row limit: sealed
    assert ch.offer(b"d") is True  # the next partial batch arms the timer again


def test_a_partial_batch_waits_for_its_interval_then_is_due() -> None:
    """A partial batch is due once its interval has passed, not before."""
    ch = channel()
    ch.offer(b"x")
    now = time.monotonic()
    due_at = ch.take(now, 1.0, False)
    assert isinstance(due_at, float) and now < due_at <= now + 1.0
    assert isinstance(ch.take(due_at, 1.0, False), Batch)


def test_a_batch_sealed_by_bytes_starts_the_next_one_with_a_fresh_timer() -> None:
    """After a seal by bytes, the next partial batch waits its own interval."""
    ch = channel(1000, 1024)
    ch.offer(b"x" * 600)
    later = time.monotonic() + 60  # the first partial batch is long overdue by then...
    ch.offer(b"y" * 600)  # ...and this line seals it by bytes
    first = ch.take(time.monotonic(), 1.0, False)
    assert isinstance(first, Batch) and first.count == 1
    ch.sent(first, quarantined=0, wire_bytes=0)
    # The new partial batch waits for its own interval.
    assert isinstance(ch.take(time.monotonic(), 1.0, False), float)
    assert isinstance(ch.take(later, 1.0, False), Batch)


def test_one_batch_in_flight_at_a_time_and_retries_keep_their_place() -> None:
    """One batch in flight at a time, and a retried one comes back first."""
    ch = channel(1)
    for line in (b"a", b"b"):
        ch.offer(line)
    first = ch.take(time.monotonic(), 1.0, False)
    assert isinstance(first, Batch)
    assert ch.take(time.monotonic(), 1.0, False) is None  # claimed: nobody else sends
    ch.retry(first, "503")
    again = ch.take(time.monotonic(), 1.0, False)
    assert again is first and first.attempts == 1
    stats = ch.stats()
    assert (stats.requests, stats.retries, stats.in_flight, stats.queued) == (1, 0, 1, 1)


def test_an_answer_after_abandon_settles_the_unknown_so_each_event_counts_once() -> None:
    """Abandoned at the deadline, the batch in flight is of unknown fate (its request is
    under way), the queued one dropped; an answer that still comes moves the unknown to
    sent, and a later one for the same batch changes nothing: each event counts once."""
    ch = channel(2)
    for line in (b"a", b"b", b"c"):
        ch.offer(line)
    in_flight = ch.take(time.monotonic(), 1.0, False)
    assert isinstance(in_flight, Batch)
    assert ch.abandon("exit_timeout") == (1, 2)  # c not sent; a and b sent, no answer yet
    stats = ch.stats()
    assert (stats.sent, stats.dropped, stats.unknown, stats.in_flight) == (0, 1, 2, 0)
    assert ch.sent(in_flight, quarantined=0, wire_bytes=0) is False  # came back too late
    ch.retry(in_flight, "late")
    ch.dropped(in_flight, "http_400", requested=True)
    stats = ch.stats()
    assert (stats.sent, stats.dropped, stats.queued, stats.in_flight) == (2, 1, 0, 0)
    assert (stats.unknown, stats.emitted) == (0, 3)


def test_an_offer_reentered_on_the_same_thread_is_kept() -> None:
    """What a signal handler that logs does when it interrupts an offer."""
    ch = channel()
    nested: list[bool | None] = []

    class Interrupting(bytes):
        def __len__(self) -> int:  # runs inside the outer offer, with its lock held
            if not nested:
                nested.append(ch.offer(b"from the signal handler"))
            return super().__len__()

    ch.offer(Interrupting(b"outer"))
    assert nested == [True]
    (batch,) = take_all(ch)
    assert batch.body == b"outer\nfrom the signal handler\n"
    assert ch.stats().sent == 2


def test_abandon_counts_a_line_a_signal_handler_logged() -> None:
    """At exit, what is given up is counted, the re-entered line too (it was left out)."""
    ch = channel()

    class Interrupting(bytes):
        def __len__(self) -> int:
            if not ch.stats().queued:
                ch.offer(b"from the signal handler")
            return super().__len__()

    ch.offer(Interrupting(b"outer"))
    assert ch.abandon("exit_timeout") == (2, 0)
    stats = ch.stats()
    assert (stats.queued, stats.dropped_by_reason) == (0, {"exit_timeout": 2})
    assert ch.empty()


def test_a_batch_whose_request_got_no_answer_is_unknown_when_given_up() -> None:
    """A batch back in the queue after a read timeout (sent whole, no answer) may be
    stored: given up, it is unknown, not dropped; one refused before sending is dropped."""
    ch = channel(1)
    for line in (b"a", b"b", b"c"):
        ch.offer(line)
    first = ch.take(time.monotonic(), 1.0, True)
    assert isinstance(first, Batch)
    ch.retry(first, "read timed out", maybe_stored=True)
    second = ch.take(time.monotonic(), 1.0, True)
    assert second is first
    ch.retry(first, "read timed out", maybe_stored=True)
    assert ch.abandon("exit_timeout") == (2, 1)
    stats = ch.stats()
    assert (stats.unknown, stats.dropped_by_reason) == (1, {"exit_timeout": 2})
    assert stats.accounted()


def test_a_flush_mark_is_not_met_by_the_channels_own_spooled_events() -> None:
    """Events spooled before a flush are the spool backlog's to wait for: resolving them
    neither meets the mark of the events queued since, nor stops their partial batch
    from being due at once."""
    ch = make_channel(interval=60)
    ch.offer(b"old")
    spilled = ch.take_for_spool(True)
    assert spilled is not None
    ch.spooled(spilled)
    ch.offer(b"new")
    mark = ch.request_flush()
    ch.unspooled(1, own=True, sent=True)
    assert not ch.reached(mark)
    batch = ch.take(time.monotonic(), 60, False)
    assert isinstance(batch, Batch) and batch.body == b"new\n"
    ch.sent(batch, quarantined=0, wire_bytes=0)
    assert ch.reached(mark)


def test_a_flush_mark_waits_for_its_events_spilled_after_it() -> None:
    """Events queued at the mark and spilled after it meet the mark once the spool
    resolves them, not when they leave memory."""
    ch = make_channel()
    ch.offer(b"queued")
    mark = ch.request_flush()
    spilled = ch.take_for_spool(True)
    assert spilled is not None
    ch.spooled(spilled)
    assert not ch.reached(mark)
    ch.unspooled(1, own=True, sent=True)
    assert ch.reached(mark)
