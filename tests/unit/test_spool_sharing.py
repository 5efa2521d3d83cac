"""A spool directory shared by processes (two ``Spool`` objects here: each has its own
identity and locks, as two processes do): who holds a file, one bound for all, receipts
that keep a writer's counters true, and many small files claimed in one request, listed
once."""

from __future__ import annotations

import errno
import gzip
import os
import time
from pathlib import Path

from tests.helpers import make_channel
from tests.spool_helpers import FaultyDisk
from tinybird_export._delivery import SpoolSource
from tinybird_export._lanes import Lane
from tinybird_export._spill import SpillBridge
from tinybird_export._spool import Refusal, Spool

HOST = "http://127.0.0.1:9"


def lines(count: int, start: int = 0) -> bytes:
    """``count`` NDJSON lines."""
    return b"".join(b'{"n":%d}\n' % i for i in range(start, start + count))


def test_each_process_start_has_its_own_identity_and_tells_the_living_from_the_dead(
    tmp_path: Path,
) -> None:
    """Not the PID: two spools of one process are two owners; an owner file whose lock is
    free (its process died) or that is missing is dead, a locked one alive."""
    first, second = Spool(str(tmp_path), 1 << 20), Spool(str(tmp_path), 1 << 20)
    assert first.identity != second.identity
    assert first.owners.ensure() and second.owners.ensure()
    now = time.monotonic()
    assert first.owners.alive(second.identity, now)
    (tmp_path / ".owner-00000000000000aa").write_text("{}")  # a crash left it, unlocked
    assert not first.owners.alive("00000000000000aa", now)
    assert not first.owners.alive("00000000000000bb", now)  # no owner file at all


def test_a_claim_is_released_when_its_holder_is_gone_not_when_it_is_old(tmp_path: Path) -> None:
    """A live holder keeps its claim through any clock; a dead one's goes at the next scan."""
    holder = Spool(str(tmp_path), 1 << 20)
    holder.write(lines(1), 1, HOST, "ds", (holder.identity, 1))
    claimed = holder.claim(HOST, "ds")
    assert claimed is not None
    other = Spool(str(tmp_path), 1 << 20)
    assert other.claim(HOST, "ds") is None
    assert holder.owners._fd is not None
    holder.disk.close(holder.owners._fd)  # its process dies: the kernel drops its lock
    later = Spool(str(tmp_path), 1 << 20)
    assert later.claim(HOST, "ds") is not None


def test_one_bound_for_every_process_that_writes_there(tmp_path: Path) -> None:
    """Four writers: together they never pass spool_max_bytes (the shared ledger)."""
    bound = 1 << 20
    writers = [Spool(str(tmp_path), bound) for _ in range(4)]
    payload = b'{"x":"%s"}\n' % os.urandom(60_000).hex().encode()  # 60 kB on disk
    written = 0
    last: dict[int, object] = {}  # each writer's last answer
    for _ in range(6):
        for i, writer in enumerate(writers):
            last[i] = writer.write(payload, 1, HOST, "ds", (writer.identity, 1))
            written += isinstance(last[i], Path)
    held = sum(p.stat().st_size for p in tmp_path.iterdir() if ".tbspool" in p.name)
    assert 0 < held <= bound and 10 <= written < 24
    assert all(isinstance(answer, Refusal) for answer in last.values())
    assert {answer.reason for answer in last.values() if isinstance(answer, Refusal)} == {
        "spool_full"
    }


def test_a_recount_counts_a_writer_that_died_mid_write_until_its_leftover_goes(
    tmp_path: Path,
) -> None:
    """A temporary file counts at the size it reserved while its writer lives, and goes
    (with its bytes) once the writer is dead."""
    spool = Spool(str(tmp_path), 1 << 20)
    (tmp_path / ".tmp-00000000000000aa-5000-x").write_bytes(b"half")
    spool.ledger.recount()
    assert spool.held_bytes() == 5000
    spool.maintain()  # its first scan: the writer is gone
    assert spool.held_bytes() == 0


def test_a_writer_learns_what_another_process_did_with_its_files(tmp_path: Path) -> None:
    """The other process sends one file and drops another: the writer's channel moves them
    from spooled to sent and to the drop reason, without counting them as its own sends."""
    writer_spool, sender_spool = Spool(str(tmp_path), 1 << 20), Spool(str(tmp_path), 1 << 20)
    channel = make_channel(rows=2)
    for i in range(4):
        channel.offer(b"%d" % i)
    writer = SpillBridge(writer_spool, HOST, lambda: {(HOST, "ds")}, lambda: None)
    assert writer.spill(channel) == 4
    lane, sender_channel = Lane(HOST, "ds", 1.0, True), make_channel(rows=2)
    sender = SpillBridge(sender_spool, HOST, lambda: {(HOST, "ds")}, lambda: None)
    outcomes = iter([("sent", None), ("drop", "http_400")])
    while (outcome := next(outcomes, None)) is not None:
        sender.step([(lane, [sender_channel])], time.monotonic(), draining=False)
        source = sender.first(lane)
        assert isinstance(source, SpoolSource) and not source.own
        if outcome[0] == "sent":
            source.sent(0, 0)
        else:
            source.drop("http_400", "400", requested=True)
    sender_spool.settle()  # its receipts are left
    writer_spool.listing.list()  # the writer's next look at the directory
    writer.step([(Lane(HOST, "ds", 1.0, True), [channel])], time.monotonic(), draining=False)
    stats = channel.stats()
    assert (stats.spooled, stats.sent, stats.dropped_by_reason) == (0, 2, {"http_400": 2})
    assert stats.unspooled == 0 and stats.accounted()
    assert sender_channel.stats().unspooled == 2


def test_many_small_files_are_claimed_as_one_request_in_order(tmp_path: Path) -> None:
    """Consecutive small files go out together, up to the batch limits, in their order."""
    spool = Spool(str(tmp_path), 1 << 30)
    for i in range(50):
        spool.write(lines(1, i), 1, HOST, "ds", (spool.identity, 1))
    some = spool.claim_many(HOST, "ds", 10, 1 << 20)
    assert [batch.count for batch in some] == [1] * 10
    rest = spool.claim_many(HOST, "ds", 10_000, 1 << 20)
    assert len(rest) == 40
    assert gzip.decompress(spool.combine(some + rest)) == lines(50)


def test_draining_many_files_lists_the_directory_once_not_once_per_file(tmp_path: Path) -> None:
    """300 files claimed and removed one by one: a handful of listings, not 300."""
    disk = FaultyDisk()
    spool = Spool(str(tmp_path), 1 << 30, disk)
    for i in range(300):
        spool.write(lines(1, i), 1, HOST, "ds", (spool.identity, 1))
    before = disk.calls["listdir"]
    while (batch := spool.claim(HOST, "ds")) is not None:
        spool.done(batch)
    assert disk.calls["listdir"] - before < 20


def test_a_413_for_several_files_sends_them_one_by_one_then_halves_the_requests(
    tmp_path: Path,
) -> None:
    """The server refuses the combined body: the first file goes alone, and later requests
    of the lane carry at most half of what was refused (never the same 413 again)."""
    spool = Spool(str(tmp_path), 1 << 30)
    bridge = SpillBridge(spool, HOST, lambda: {(HOST, "ds")}, lambda: None)
    lane, channel = Lane(HOST, "ds", 1.0, True), make_channel(rows=1)
    for i in range(8):
        channel.offer(b"%d" % i)
    bridge.spill(channel)
    channel = make_channel(rows=100)  # the lane's limits now allow 100 rows per request
    bridge.step([(lane, [channel])], time.monotonic(), draining=False)
    source = bridge.first(lane)
    assert isinstance(source, SpoolSource) and len(source.batches) == 8
    assert source.split()
    bridge.step([(lane, [channel])], time.monotonic(), draining=False)
    alone = bridge.first(lane)
    assert isinstance(alone, SpoolSource) and len(alone.batches) == 1
    alone.sent(0, 0)
    sizes = []
    while True:
        bridge.step([(lane, [channel])], time.monotonic(), draining=False)
        nxt = bridge.first(lane)
        if not isinstance(nxt, SpoolSource):
            break
        sizes.append(len(nxt.batches))
        nxt.sent(0, 0)
    assert sum(sizes) == 7 and max(sizes) <= 4


def test_without_locks_an_owner_is_dead_after_ten_minutes_without_a_renewal(
    tmp_path: Path,
) -> None:
    """A file system without flock: liveness by renewals, seen on the observer's own
    monotonic clock (only whether the file's time changed counts, never its value)."""
    owner = Spool(str(tmp_path), 1 << 20)
    assert owner.owners.ensure()
    disk = FaultyDisk()
    disk.fail("lock", errno.ENOLCK)
    observer = Spool(str(tmp_path), 1 << 20, disk).owners
    now = time.monotonic()
    assert observer.alive(owner.identity, now)
    assert observer.alive(owner.identity, now + 500)  # seen unchanged for 500 s: not yet
    os.utime(owner.owners.path, (0, 0))  # renewed (its time changed, whatever to)
    assert observer.alive(owner.identity, now + 700)  # the renewal restarts the count
    assert not observer.alive(owner.identity, now + 1400)  # 700 s without a renewal
