"""The disk spool when its disk fails at any one call (a read-only directory, EIO, ENOSPC, a
short write): nothing raises, nothing partial is left or counted, what could not be done
is said, and everything works again once the disk does. Files whose header passes its
checksum but says something odd, huge files and leftovers dated in the future are handled
too. A ``FaultyDisk`` makes the chosen system call fail as a real disk does."""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import make_channel
from tests.spool_helpers import FaultyDisk
from tinybird_export import _spool_format
from tinybird_export._delivery import SpoolSource
from tinybird_export._lanes import Lane
from tinybird_export._spill import SpillBridge
from tinybird_export._spool import SUFFIX, Refusal, Spool
from tinybird_export._spool_disk import Disk

HOST = "http://127.0.0.1:9"
DEAD = "0123456789abcdef"  # an identity no process holds (no owner file)


def lines(count: int, start: int = 0) -> bytes:
    """``count`` NDJSON lines."""
    return b"".join(b'{"n":%d}\n' % i for i in range(start, start + count))


def batch_files(directory: Path) -> list[str]:
    """Batch files, claimed or not, and temporary files: what a fault must not leave."""
    return sorted(p.name for p in directory.iterdir() if SUFFIX in p.name or ".tmp-" in p.name)


@pytest.fixture
def disk() -> FaultyDisk:
    """A disk with no fault yet."""
    return FaultyDisk()


@pytest.fixture
def spool(tmp_path: Path, disk: FaultyDisk) -> Spool:
    """A spool of 1 MiB on the faulty disk."""
    return Spool(str(tmp_path / "spool"), 1 << 20, disk)


@pytest.mark.parametrize(
    ("operation", "code", "reason"),
    [
        ("create", errno.EROFS, "spool_error"),
        ("create", errno.ENOSPC, "spool_full"),
        ("write", errno.ENOSPC, "spool_full"),
        ("write", errno.EIO, "spool_error"),
        ("fsync", errno.EIO, "spool_error"),
        ("rename", errno.EROFS, "spool_error"),
        ("rename", errno.EACCES, "spool_error"),
        ("pwrite", errno.EIO, "spool_error"),  # the shared count cannot take the reservation
    ],
)
def test_a_write_the_disk_refuses_leaves_nothing_and_says_why(
    spool: Spool,
    disk: FaultyDisk,
    operation: str,
    code: int,
    reason: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The write is refused with its reason; no part of a file stays, nothing stays counted;
    once the disk heals, the next write is whole."""
    owner = (spool.identity, 1)
    assert spool.owners.ensure()  # this process's owner file, made at its first need
    disk.fail(operation, code)
    assert spool.write(lines(3), 3, HOST, "ds", owner) == Refusal(reason, os.strerror(code))
    assert batch_files(spool.directory) == []
    assert spool.held_bytes() == 0
    assert "cannot write to the spool" in capsys.readouterr().err
    disk.heal()
    assert isinstance(spool.write(lines(3), 3, HOST, "ds", owner), Path)
    claimed = spool.claim(HOST, "ds")
    assert claimed is not None and gzip.decompress(claimed.body) == lines(3)


def test_short_writes_are_finished_and_a_write_that_stops_is_a_full_disk(tmp_path: Path) -> None:
    """os.write may take fewer bytes than given (a disk filling up): the rest is written;
    one that takes none is a full disk, and no file is left."""

    class Short(Disk):
        limit = 7

        def write(self, fd: int, data: bytes | memoryview) -> int:
            return os.write(fd, data[: self.limit]) if self.limit else 0

    disk = Short()
    spool = Spool(str(tmp_path), 1 << 20, disk)
    assert isinstance(spool.write(lines(50), 50, HOST, "ds", (spool.identity, 1)), Path)
    claimed = spool.claim(HOST, "ds")
    assert claimed is not None and gzip.decompress(claimed.body) == lines(50)
    disk.limit = 0
    refused = spool.write(lines(5), 5, HOST, "ds", (spool.identity, 1))
    assert isinstance(refused, Refusal) and refused.reason == "spool_full"
    assert [p for p in batch_files(tmp_path) if ".tmp-" in p] == []


def test_short_writes_of_the_real_os_write_never_leave_a_truncated_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """os.write itself answering short counts (as on a disk filling up): the file is whole."""
    real = os.write
    spool = Spool(str(tmp_path), 1 << 20)
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, bytes(data)[:100]))
    path = spool.write(lines(200), 200, HOST, "ds", (spool.identity, 1))
    monkeypatch.setattr(os, "write", real)
    assert isinstance(path, Path)
    claimed = spool.claim(HOST, "ds")
    assert claimed is not None and claimed.count == 200 and spool.corrupt == 0


def test_an_acknowledged_file_that_cannot_be_removed_is_marked_and_not_waited_for(
    spool: Spool, disk: FaultyDisk, capsys: pytest.CaptureFixture[str]
) -> None:
    """A read-only directory (unlink refused, the file itself writable): the file is marked
    acknowledged in place, a flush does not wait for it, and it is removed once the
    directory is writable again."""
    spool.write(lines(2), 2, HOST, "ds", (spool.identity, 1))
    backlog = spool.backlog(HOST, "ds")
    claimed = spool.claim(HOST, "ds")
    assert claimed is not None
    disk.fail("unlink", errno.EPERM)
    spool.done(claimed)
    assert claimed.path.read_bytes()[:1] == b"A"
    assert "it is marked sent" in capsys.readouterr().err
    assert not spool.remaining(HOST, "ds", backlog)
    spool.listing.list()  # still on disk: still not waited for
    assert not spool.remaining(HOST, "ds", backlog)
    disk.heal()
    spool.maintain()  # its next upkeep removes it
    assert not claimed.path.exists() and spool.held_bytes() == 0


def test_a_file_marked_acknowledged_by_a_process_that_died_is_removed_unsent(
    tmp_path: Path,
) -> None:
    """The claimer died before it could remove its acknowledged file: the next process
    removes it at its claim, and sends the next one."""
    spool = Spool(str(tmp_path), 1 << 20)
    first = spool.write(lines(2), 2, HOST, "ds", (DEAD, 1))
    spool.write(lines(1, 2), 1, HOST, "ds", (DEAD, 1))
    assert isinstance(first, Path)
    with first.open("r+b") as file:
        file.write(b"A")
    got = Spool(str(tmp_path), 1 << 20).claim(HOST, "ds")
    assert got is not None and gzip.decompress(got.body) == lines(1, 2)
    assert not first.exists()


def test_an_acknowledged_file_on_a_read_only_mount_is_kept_for_later(
    spool: Spool, disk: FaultyDisk, capsys: pytest.CaptureFixture[str]
) -> None:
    """EROFS: not even the file can be marked; it is removed once the mount is writable
    again, and the message says what a restart meanwhile would do."""
    spool.write(lines(2), 2, HOST, "ds", (spool.identity, 1))
    claimed = spool.claim(HOST, "ds")
    assert claimed is not None
    disk.fail("unlink", errno.EROFS)
    disk.fail("open", errno.EROFS)
    spool.done(claimed)
    assert "may send it again" in capsys.readouterr().err
    assert claimed.path.exists()
    disk.heal()
    spool.settle()  # at exit too
    assert not claimed.path.exists() and spool.held_bytes() == 0


@pytest.mark.parametrize(
    "operation", ["listdir", "rename", "open", "read", "stat", "unlink", "lock", "mkdir", "utime"]
)
def test_no_call_that_fails_ever_raises_out_of_the_spool(
    spool: Spool, disk: FaultyDisk, operation: str
) -> None:
    """Whichever call fails (EIO), every method a sender or the exit drain calls returns."""
    spool.write(lines(2), 2, HOST, "ds", (spool.identity, 1))
    spool.write(lines(1, 2), 1, HOST, "ds", (DEAD, 1))
    claimed = spool.claim(HOST, "ds")
    disk.fail(operation, errno.EIO)
    spool.maintain()
    spool.has_pending(HOST, "ds")
    more = spool.claim_many(HOST, "ds", 100, 1 << 20)
    spool.write(lines(1), 1, HOST, "ds", (spool.identity, 1))
    for batch in [claimed, *more]:
        if batch is not None:
            spool.release(batch)
            spool.done(batch)
    spool.backlog(HOST, "ds")
    spool.report_unmatched({(HOST, "ds")})
    spool.settle()
    disk.heal()
    spool.maintain()


def test_a_file_that_cannot_be_read_now_is_given_back(spool: Spool, disk: FaultyDisk) -> None:
    """EIO on reading a claimed file: it goes back, unclaimed, for later or another process."""
    spool.write(lines(2), 2, HOST, "ds", (spool.identity, 1))
    disk.fail("open", errno.EIO, on=".claimed-", times=1)
    assert spool.claim(HOST, "ds") is None
    assert all(".claimed-" not in name for name in batch_files(spool.directory))
    assert spool.claim(HOST, "ds") is not None


def test_a_corrupt_file_that_cannot_be_moved_aside_is_not_read_again(
    spool: Spool, disk: FaultyDisk
) -> None:
    """corrupt/ cannot be made: the file stays claimed (the next process sets it aside), is
    counted once, and the next good file is claimed."""
    bad = spool.write(lines(2), 2, HOST, "ds", (spool.identity, 1))
    spool.write(lines(1, 2), 1, HOST, "ds", (spool.identity, 1))
    assert isinstance(bad, Path)
    data = bytearray(bad.read_bytes())
    data[-3] ^= 0xFF
    bad.write_bytes(bytes(data))
    disk.fail("mkdir", errno.EROFS)
    got = spool.claim(HOST, "ds")
    assert got is not None and got.count == 1
    assert spool.corrupt == 1 and spool.claim(HOST, "ds") is None


def test_a_file_system_without_locks_still_bounds_each_process(
    tmp_path: Path, disk: FaultyDisk, capsys: pytest.CaptureFixture[str]
) -> None:
    """No flock (some network mounts): writes go on, bounded per process, and it is said
    that a dead process's claims wait longer."""
    disk.fail("lock", errno.ENOLCK)
    spool = Spool(str(tmp_path), 1 << 20, disk)
    assert isinstance(spool.write(lines(2), 2, HOST, "ds", (spool.identity, 1)), Path)
    assert spool.held_bytes() > 0
    assert spool.claim(HOST, "ds") is not None
    assert "has no file locks" in capsys.readouterr().err


def rewrite_header(path: Path, **fields: Any) -> None:
    """Give a batch file a header with ``fields`` changed and a valid checksum."""
    data = path.read_bytes()
    line, _, body = data[1:].partition(b"\n")
    header = {**orjson.loads(line), **fields}
    header["sha256"] = fields.get("sha256", hashlib.sha256(body).hexdigest())
    path.write_bytes(b"P" + orjson.dumps(header) + b"\n" + body)


@pytest.mark.parametrize(
    "fields",
    [
        {"count": "3"},
        {"count": 0},
        {"count": -3},
        {"count": True},
        {"count": 2**62},
        {"count": 5},  # the body holds 3 lines
        {"raw_bytes": 3},
        {"raw_bytes": None},
        {"owner": "abc"},
        {"owner": ["0123456789abcdef"]},
        {"owner": ["zz", 1]},
        {"owner": ["0123456789abcdef", -1]},
        {"owner": ["0123456789abcdef", "1"]},
        {"sha256": 12},
        {"v": 1},
        {"datasource": "other"},
    ],
)
def test_a_header_with_a_valid_checksum_but_odd_fields_is_corrupt(
    tmp_path: Path, fields: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Never trust a field: each odd one sets the file aside (counted, said), and the next
    good file is sent."""
    spool = Spool(str(tmp_path), 1 << 20)
    odd = spool.write(lines(3), 3, HOST, "ds", (spool.identity, 1))
    spool.write(lines(1, 3), 1, HOST, "ds", (spool.identity, 1))
    assert isinstance(odd, Path)
    rewrite_header(odd, **fields)
    got = spool.claim(HOST, "ds")
    assert got is not None and gzip.decompress(got.body) == lines(1, 3)
    assert spool.corrupt == 1 and (tmp_path / "corrupt" / odd.name).exists()
    assert "failed its check" in capsys.readouterr().err


def test_a_huge_file_is_corrupt_without_being_read(tmp_path: Path) -> None:
    """A file larger than any batch (a sparse 120 MB one) is set aside unread."""

    class Counting(Disk):
        read_bytes = 0

        def read(self, fd: int, size: int, offset: int) -> bytes:
            data = super().read(fd, size, offset)
            self.read_bytes += len(data)
            return data

    disk = Counting()
    spool = Spool(str(tmp_path), 1 << 30, disk)
    path = spool.write(lines(1), 1, HOST, "ds", (spool.identity, 1))
    assert isinstance(path, Path)
    os.truncate(path, 120 * 1000 * 1000)
    assert spool.claim(HOST, "ds") is None
    assert spool.corrupt == 1 and disk.read_bytes < 1024


def test_a_body_that_inflates_past_its_size_is_corrupt_and_inflated_in_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gzip bomb behind a valid checksum: the inflating stops past the largest batch."""
    monkeypatch.setattr(_spool_format, "MAX_RAW_BYTES", 100_000)
    spool = Spool(str(tmp_path), 1 << 20)
    path = spool.write(lines(1), 1, HOST, "ds", (spool.identity, 1))
    assert isinstance(path, Path)
    header = orjson.loads(path.read_bytes()[1:].partition(b"\n")[0])
    body = gzip.compress(b"\n" * 10_000_000, 9)
    header.update(sha256=hashlib.sha256(body).hexdigest(), count=1, raw_bytes=10)
    path.write_bytes(b"P" + orjson.dumps(header) + b"\n" + body)
    assert spool.claim(HOST, "ds") is None and spool.corrupt == 1
    with pytest.raises(_spool_format.SpoolError, match="past any batch"):
        _spool_format.inflated_size(body)


def test_leftovers_of_dead_processes_go_whatever_their_dates(tmp_path: Path) -> None:
    """A temporary file of a process that is gone goes at the next scan even when dated a
    day ahead (a clock step); one naming no owner goes when dated an hour away either way;
    a live process's stays however old it looks."""
    live = Spool(str(tmp_path), 1 << 20)
    assert live.owners.ensure()
    ahead, behind = time.time() + 86_400, time.time() - 86_400
    names = {
        f".tmp-{DEAD}-10-x": ahead,
        ".tmp-noowner-a": ahead,
        ".tmp-noowner-b": time.time(),
        f".tmp-{live.identity}-10-y": behind,
        f".receipt-{DEAD}-z": time.time(),
        f".owner-{DEAD}": time.time(),
    }
    for name, when in names.items():
        (tmp_path / name).write_bytes(b"x" * 10)
        os.utime(tmp_path / name, (when, when))
    Spool(str(tmp_path), 1 << 20).maintain()  # another process's first upkeep scans
    kept = sorted(p.name for p in tmp_path.iterdir() if p.name in names)
    assert kept == sorted([".tmp-noowner-b", f".tmp-{live.identity}-10-y"])


def test_a_read_only_blip_in_the_bridge_never_holds_the_lane(tmp_path: Path) -> None:
    """The acknowledged spool file cannot be removed: the source is resolved anyway, its
    events counted sent, the slot freed, and memory goes next; files that cannot be
    claimed leave the lane to memory too."""
    disk = FaultyDisk()
    spool = Spool(str(tmp_path), 1 << 20, disk)
    bridge = SpillBridge(spool, HOST, lambda: {(HOST, "ds")}, lambda: None)
    lane, channel = Lane(HOST, "ds", 1.0, True), make_channel(rows=2)
    for i in range(6):
        channel.offer(b"%d" % i)
    assert bridge.spill(channel) == 6  # three files
    bridge.step([(lane, [channel])], time.monotonic(), draining=False)
    source = bridge.first(lane)
    assert isinstance(source, SpoolSource)
    disk.fail("unlink", errno.EPERM)
    disk.fail("rename", errno.EPERM)
    source.sent(0, 0)
    assert bridge.first(lane) is None
    channel.offer(b"new")
    bridge.step([(lane, [channel])], time.monotonic(), draining=False)
    assert bridge.first(lane) is None  # nothing claimable: memory goes
    stats = channel.stats()
    assert (stats.sent, stats.spooled, stats.queued) == (source.count, 6 - source.count, 1)
