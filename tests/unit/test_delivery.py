"""One attempt and the one outcome table, for each kind of source (a batch in memory, a
spool file), against a recording transport: sent, quarantined, retried, split, dropped,
a bug, and an attempt cut short."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import RecordingTransport, accepted, answered, make_channel, refused
from tinybird_export._batch import Batch
from tinybird_export._channel import Channel
from tinybird_export._client import Attempt
from tinybird_export._delivery import Delivery, MemorySource, Source, SpoolSource
from tinybird_export._lanes import Lane
from tinybird_export._spool import SUFFIX, Spool

HOST = "http://127.0.0.1:9"
OTHER = "0123456789abcdef"  # another process's identity
LINES = [b'{"n":%d}' % i for i in range(4)]


class Case:
    """A source of one kind holding ``LINES``, its channel, lane and delivery."""

    def __init__(
        self, kind: str, tmp_path: Path, transport: RecordingTransport, lines: list[bytes]
    ) -> None:
        self.kind = kind
        self.channel = make_channel(rows=100)
        self.lane = Lane(HOST, "ds", 1.0, True)
        self.transport = transport
        self.resolved: list[SpoolSource] = []
        self.spool = Spool(str(tmp_path / "spool"), 1 << 20) if kind == "spool" else None
        self.delivery = Delivery(
            HOST, transport, lambda: (3.0, 10.0), lambda: None, spooling=self.spool is not None
        )
        for line in lines:
            self.channel.offer(line)
        self.source = self.take()

    def take(self) -> Source:
        """The next source to send: the head batch, or the oldest spool file."""
        if self.spool is None:
            batch = self.channel.take(time.monotonic(), 1.0, True)
            assert isinstance(batch, Batch)
            return MemorySource(self.channel, batch)
        while (batch := self.channel.take_for_spool(True)) is not None:
            owner = (self.spool.identity, self.channel.serial)
            assert isinstance(self.spool.write(batch.body, batch.count, HOST, "ds", owner), Path)
            self.channel.spooled(batch)
        claimed = self.spool.claim(HOST, "ds")
        assert claimed is not None
        return SpoolSource(self.spool, [claimed], [self.channel], self.resolved.append)

    def attempt(self, deadline: float | None = None) -> None:
        """One attempt of the current source."""
        self.delivery.attempt(self.lane, self.source, deadline)

    def files(self) -> list[str]:
        """The spool's batch files, claimed or not."""
        assert self.spool is not None
        return sorted(p.name for p in self.spool.directory.iterdir() if SUFFIX in p.name)


@pytest.fixture(params=["memory", "spool"])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Case]:
    """Make a ``Case`` of each kind of source holding ``lines``, with a transport that
    answers ``script``."""

    def make(*script: Attempt | BaseException, lines: list[bytes] = LINES) -> Case:
        return Case(request.param, tmp_path, RecordingTransport(*script), lines)

    return make


def test_sent(case: Callable[..., Case]) -> None:
    """A 202: the events are sent and counted, in one request carrying them all."""
    c = case(accepted())
    c.attempt()
    stats = c.channel.stats()
    assert (stats.sent, stats.queued, stats.in_flight, stats.spooled) == (4, 0, 0, 0)
    assert c.transport.lines() == LINES
    assert not c.lane.failing
    if c.kind == "spool":
        assert c.files() == [] and c.resolved == [c.source]
        assert stats.unspooled == 4 and c.transport.posts[0].gzipped


def test_quarantined_rows_are_sent_counted_and_said(
    case: Callable[..., Case], capsys: pytest.CaptureFixture[str]
) -> None:
    """Rows the server quarantined count as sent and quarantined, and the fix is said."""
    c = case(accepted(quarantined=2))
    c.attempt()
    assert (c.channel.stats().sent, c.channel.stats().quarantined) == (4, 2)
    assert "ds_quarantine" in capsys.readouterr().err


@pytest.mark.parametrize("answer", [answered(503), refused()], ids=["503", "refused"])
def test_retried_it_stays_first_and_the_lane_pauses(
    case: Callable[..., Case], answer: Attempt, capsys: pytest.CaptureFixture[str]
) -> None:
    """A retryable failure keeps the source first in line (the batch at the head, the file
    claimed), pauses the lane with a growing backoff, and is said once."""
    c = case(answer, answer)
    started = time.monotonic()
    c.attempt()
    first_pause = c.lane.paused_until - started
    assert 0.25 <= first_pause <= 0.5 + 0.1  # backoff(0): 0.5 s times 0.5-1
    assert c.lane.failing
    assert c.source.attempts == 1
    stats = c.channel.stats()
    assert stats.sent == 0 and stats.dropped == 0 and stats.last_error
    if c.kind == "memory":
        assert stats.queued == 4 and stats.requests == 1
        again = c.take()
        assert isinstance(again, MemorySource) and isinstance(c.source, MemorySource)
        assert again.batch is c.source.batch  # the same batch, at the head
        c.source = again
    else:
        assert stats.spooled == 4 and c.resolved == []
        assert len(c.files()) == 1 and ".claimed-" in c.files()[0]  # still claimed
    c.attempt()
    assert c.source.attempts == 2
    assert c.lane.paused_until - time.monotonic() > 0.4  # backoff(1): 1 s times 0.5-1
    assert capsys.readouterr().err.count("retried") == 1  # said once


def test_a_429_waits_for_retry_after(case: Callable[..., Case]) -> None:
    """429 and 503 pause the lane for the server's Retry-After."""
    c = case(answered(429, {"retry-after": "7"}))
    started = time.monotonic()
    c.attempt()
    assert 7 <= c.lane.paused_until - started < 7.5


def test_a_413_splits_it_in_halves_in_its_place(case: Callable[..., Case]) -> None:
    """A 413 for several events replaces the source by its halves, in order (a file's
    halves are written by the spill bridge: the source asks for it)."""
    c = case(answered(413))
    c.attempt()
    assert c.channel.stats().dropped == 0
    if c.kind == "memory":
        halves = []
        for _ in range(2):
            half = c.take()
            assert isinstance(half, MemorySource) and 1 <= half.count < 4
            halves.append(bytes(half.batch.body))
            half.sent(0, 0)
        assert b"".join(halves) == b"".join(line + b"\n" for line in LINES)
        assert c.channel.stats().sent == 4
    else:
        assert isinstance(c.source, SpoolSource) and c.source.split_requested
        assert c.resolved == []


def test_a_413_for_one_event_drops_it_as_too_large(
    case: Callable[..., Case], capsys: pytest.CaptureFixture[str]
) -> None:
    """An event that alone exceeds the cap cannot be split: dropped as too_large, said."""
    c = case(answered(413), lines=[LINES[0]])
    c.attempt()
    assert c.channel.stats().dropped_by_reason == {"too_large": 1}
    assert "lower max_event_bytes" in capsys.readouterr().err


def test_a_refusal_drops_it_counted_and_said(
    case: Callable[..., Case], capsys: pytest.CaptureFixture[str]
) -> None:
    """A 403 is not retried: dropped as http_403 (a file is removed), with the fix."""
    c = case(answered(403, error="invalid token"))
    c.attempt()
    stats = c.channel.stats()
    assert stats.dropped_by_reason == {"http_403": 4}
    assert stats.queued == stats.spooled == 0 and "invalid token" in stats.last_error
    assert not c.lane.failing
    err = capsys.readouterr().err
    assert "DATASOURCE:APPEND" in err and "Dropped 4 event(s)" in err
    if c.kind == "spool":
        assert c.files() == [] and "from the spool" in err


def test_a_bug_in_the_attempt_drops_it_as_error_and_is_reported(
    case: Callable[..., Case], capsys: pytest.CaptureFixture[str]
) -> None:
    """An exception that is not a transport failure is a bug: dropped as error, not
    retried (it would block the data source for good), reported once."""
    c = case(RuntimeError("injected bug"))
    c.attempt()
    stats = c.channel.stats()
    assert stats.dropped_by_reason == {"error": 4} and stats.requests == 0
    assert "injected bug" in capsys.readouterr().err
    if c.kind == "spool":
        assert c.files() == []


def test_an_attempt_cut_short_leaves_it_unresolved(case: Callable[..., Case]) -> None:
    """A BaseException (the thread is ending) resolves nothing: the source is sent later."""
    c = case(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        c.attempt()
    stats = c.channel.stats()
    assert stats.sent == stats.dropped == stats.in_flight == 0
    if c.kind == "memory":
        assert stats.queued == 4
    else:
        assert stats.spooled == 4 and len(c.files()) == 1 and c.resolved == []


def test_a_foreign_spool_file_is_counted_as_unspooled_only(tmp_path: Path) -> None:
    """A file another process wrote is sent for its data source: unspooled, but not this
    producer's sent (it never emitted it), and the invariant holds."""
    spool = Spool(str(tmp_path), 1 << 20)
    spool.write(b'{"n":1}\n', 1, HOST, "ds", (OTHER, 2))
    claimed = spool.claim(HOST, "ds")
    assert claimed is not None
    channel = make_channel()
    source = SpoolSource(spool, [claimed], [channel], lambda s: None)
    assert not source.own
    transport = RecordingTransport(accepted())
    Delivery(HOST, transport, lambda: (3.0, 10.0), lambda: None, spooling=True).attempt(
        Lane(HOST, "ds", 1.0, True), source, None
    )
    stats = channel.stats()
    assert (stats.unspooled, stats.sent, stats.emitted) == (1, 0, 0)


def test_the_attempts_deadline_is_the_earliest_of_its_limits() -> None:
    """connect_timeout + timeout from now, capped by the caller's deadline, the exit
    budget and a closed channel's deadline; wait=true answers get 60 s."""
    transport = RecordingTransport(default=accepted())
    exit_at: list[float | None] = [None]
    delivery = Delivery(HOST, transport, lambda: (3.0, 10.0), lambda: exit_at[0], spooling=False)
    lane = Lane(HOST, "ds", 1.0, True)

    def send(channel: Channel, deadline: float | None = None) -> float:
        channel.offer(b"x")
        batch = channel.take(time.monotonic(), 1.0, True)
        assert isinstance(batch, Batch)
        started = time.monotonic()
        delivery.attempt(lane, MemorySource(channel, batch), deadline)
        cap = transport.posts[-1].deadline
        assert cap is not None
        return cap - started

    assert 12.9 <= send(make_channel()) <= 13.1
    assert 62.9 <= send(make_channel(wait=True)) <= 63.1
    assert send(make_channel(), time.monotonic() + 2) <= 2
    closed = make_channel()
    closed.offer(b"x")  # queued before the close (a closed channel refuses lines)
    closed.close(time.monotonic() + 1)
    assert send(closed) <= 1
    exit_at[0] = time.monotonic() + 0.5
    assert send(make_channel()) <= 0.5


def test_a_recovery_is_said_after_failures(capsys: pytest.CaptureFixture[str]) -> None:
    """After a failure was said, the first success says the host answers again."""
    transport = RecordingTransport(answered(503), accepted())
    delivery = Delivery(HOST, transport, lambda: (3.0, 10.0), lambda: None, spooling=False)
    lane, channel = Lane(HOST, "ds", 1.0, True), make_channel()
    channel.offer(b"x")
    for _ in range(2):
        batch = channel.take(time.monotonic(), 1.0, True)
        assert isinstance(batch, Batch)
        delivery.attempt(lane, MemorySource(channel, batch), None)
    err = capsys.readouterr().err
    assert "503" in err and "answers again" in err
    assert channel.stats().sent == 1
