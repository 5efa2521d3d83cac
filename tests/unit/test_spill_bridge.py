"""The spill bridge, off the send path: what a failing lane spills, the spool file it claims
before memory, the halves of a 413, what goes back at exit, and what it says."""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

import pytest

from tests.helpers import make_channel
from tinybird_export._batch import Batch
from tinybird_export._channel import Channel
from tinybird_export._delivery import SpoolSource
from tinybird_export._lanes import Lane
from tinybird_export._scheduler import BUSY
from tinybird_export._spill import SpillBridge
from tinybird_export._spool import SUFFIX, Spool

HOST = "http://127.0.0.1:9"


def bridge_for(tmp_path: Path, max_bytes: int = 1 << 20) -> tuple[SpillBridge, list[int]]:
    """A bridge to a spool in ``tmp_path``; the list counts its wake-ups."""
    woken: list[int] = []
    spool = Spool(str(tmp_path / "spool"), max_bytes)
    return SpillBridge(spool, HOST, lambda: {(HOST, "ds")}, lambda: woken.append(1)), woken


def filled(count: int, size: int = 100) -> Channel:
    """A channel of 10 kB (its spill mark is 5 kB), one line per batch, ``count`` lines."""
    channel = make_channel(rows=1, max_bytes=10_000)
    for i in range(count):
        channel.offer(b"%04d" % i + b"x" * (size - 4))
    return channel


def files(bridge: SpillBridge) -> list[Path]:
    """The spool's batch files, oldest first."""
    return sorted(p for p in bridge.spool.directory.iterdir() if SUFFIX in p.name)


def test_a_failing_lane_spills_past_half_its_bound_down_to_a_quarter(tmp_path: Path) -> None:
    """While the lane fails, a channel over half its bound writes its oldest batches to
    disk until it holds a quarter; a healthy lane spills nothing."""
    bridge, _ = bridge_for(tmp_path)
    lane, channel = Lane(HOST, "ds", 1.0, True), filled(60)  # 6 kB: over the 5 kB mark
    bridge.step([(lane, [channel])], time.monotonic(), draining=False)
    assert files(bridge) == []
    lane.failing = True
    lane.paused_until = time.monotonic() + 60  # paused: spills, but claims nothing
    bridge.step([(lane, [channel])], time.monotonic(), draining=False)
    stats = channel.stats()
    assert channel.held_bytes() <= 2_500 and stats.spooled == 60 - stats.queued
    assert all(".claimed-" not in p.name for p in files(bridge))
    oldest = gzip.decompress(files(bridge)[0].read_bytes().partition(b"\n")[2])
    assert oldest.startswith(b"0000")  # the oldest went first


def test_a_lane_with_spooled_files_claims_the_oldest_before_its_memory(tmp_path: Path) -> None:
    """Once the lane may send, the bridge claims its oldest file into the lane's slot, and
    the scheduler is handed that file before any batch in memory."""
    bridge, _ = bridge_for(tmp_path)
    lane, channel = Lane(HOST, "ds", 1.0, True), filled(60)
    lane.failing = True
    lane.paused_until = time.monotonic() + 60
    for _ in range(2):  # the first spills; the second finds the files, and the pause
        bridge.step([(lane, [channel])], time.monotonic(), draining=False)
    assert bridge.first(lane) is None  # paused: nothing claimed
    assert all(".claimed-" not in p.name for p in files(bridge))
    lane.failing, lane.paused_until = False, 0.0
    bridge.step([(lane, [channel])], time.monotonic(), draining=False)
    first = bridge.first(lane)
    assert isinstance(first, SpoolSource) and first.own and first.channel is channel
    assert gzip.decompress(first.payload()[1] or b"").startswith(b"0000")
    first.sent(0, 0)  # resolved: the slot is free for the next file
    assert bridge.first(lane) is None
    bridge.step([(lane, [channel])], time.monotonic(), draining=False)
    second = bridge.first(lane)
    assert isinstance(second, SpoolSource) and second is not first


def test_memory_waits_while_the_bridge_works_on_its_lane(tmp_path: Path) -> None:
    """Another thread's bridge step on the lane makes its memory wait (BUSY), and the
    worker is woken when the step ends."""
    bridge, woken = bridge_for(tmp_path)
    lane = Lane(HOST, "ds", 1.0, True)
    seen: list[object] = []
    channel = filled(1)

    class Watching(Channel):
        def held_bytes(self) -> int:
            import threading

            thread = threading.Thread(target=lambda: seen.append(bridge.first(lane)))
            thread.start()  # what a sender sees while this step runs
            thread.join()
            return super().held_bytes()

    watching = Watching("ds", HOST, wait=False, limits=channel.limits)
    lane.failing = True
    bridge.step([(lane, [watching])], time.monotonic(), draining=False)
    assert seen == [BUSY]
    assert woken == [1]
    assert bridge.first(lane) is None  # free again


def test_a_413_for_a_spool_file_writes_its_halves_in_its_place(tmp_path: Path) -> None:
    """The halves replace the file where it was in the order, and are claimed in turn."""
    bridge, _ = bridge_for(tmp_path)
    lane, channel = Lane(HOST, "ds", 1.0, True), make_channel(rows=10)
    for i in range(10):
        channel.offer(b"%d" % i)
    channel.offer(b"later")  # the next batch: after the halves
    assert bridge.spill(channel) == 11
    bridge.step([(lane, [channel])], time.monotonic(), draining=False)
    source = bridge.first(lane)
    assert isinstance(source, SpoolSource) and source.count == 10
    assert source.split()
    assert bridge.first(lane) == BUSY  # memory waits for the halves
    bodies = []
    for _ in range(3):
        bridge.step([(lane, [channel])], time.monotonic(), draining=False)
        claimed = bridge.first(lane)
        assert isinstance(claimed, SpoolSource)
        bodies.append(gzip.decompress(claimed.batch.body))
        claimed.sent(0, 0)
    assert bodies == [
        b"".join(b"%d\n" % i for i in range(5)),
        b"".join(b"%d\n" % i for i in range(5, 10)),
        b"later\n",
    ]
    assert channel.stats().sent == 11 and files(bridge) == []


def test_at_exit_everything_is_spilled_and_claims_go_back(tmp_path: Path) -> None:
    """The exit (or a close deadline) spills the partial batch and the one in flight too,
    and the claimed file is given back for the next process."""
    bridge, _ = bridge_for(tmp_path)
    lane, channel = Lane(HOST, "ds", 1.0, True), make_channel(rows=2)
    for i in range(5):
        channel.offer(b"%d" % i)
    in_flight = channel.take(time.monotonic(), 1.0, True)
    assert isinstance(in_flight, Batch)
    assert bridge.spill(channel) == 5
    assert channel.empty() and channel.stats().spooled == 5
    assert channel.sent(in_flight, quarantined=0, wire_bytes=0) is False  # its answer: late
    bridge.step([(lane, [channel])], time.monotonic(), draining=True)
    assert any(".claimed-" in p.name for p in files(bridge))
    bridge.release(lane)
    assert bridge.first(lane) is None
    assert all(".claimed-" not in p.name for p in files(bridge))


def test_a_full_spool_leaves_the_batch_in_memory(tmp_path: Path) -> None:
    """Past spool_max_bytes nothing is written: memory's drop policy applies."""
    bridge, _ = bridge_for(tmp_path, max_bytes=1)
    channel = filled(10)
    assert bridge.spill(channel) == 0
    assert channel.stats().queued == 10 and files(bridge) == []


def test_a_claim_held_across_retries_is_never_taken_by_another_process(tmp_path: Path) -> None:
    """A file that keeps failing stays claimed, however old its times say it is: another
    process's scan asks the claimer's lock, not a clock."""
    bridge, _ = bridge_for(tmp_path)
    lane, channel = Lane(HOST, "ds", 1.0, True), filled(1)
    bridge.spill(channel)
    bridge.step([(lane, [channel])], time.monotonic(), draining=False)
    source = bridge.first(lane)
    assert isinstance(source, SpoolSource)
    a_day_ago = time.time() - 86_400
    for path in bridge.spool.directory.iterdir():
        os.utime(path, (a_day_ago, a_day_ago))
    other = Spool(str(bridge.spool.directory), 1 << 20)  # another process, scanning
    assert other.claim(HOST, "ds") is None
    assert source.batch.path.exists()


def test_files_no_producer_sends_are_said_once_after_start_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Files for a data source nobody here sends to are kept, and said once, five seconds
    after the bridge started (every producer of the app exists by then)."""
    bridge, _ = bridge_for(tmp_path)
    bridge.spool.write(b"{}\n", 1, HOST, "gone", ("0123456789abcdef", 2))
    now = time.monotonic()
    bridge.step([], now, draining=False)
    assert "'gone'" not in capsys.readouterr().err
    for later in (now + 6, now + 7):
        bridge.step([], later, draining=False)
    assert capsys.readouterr().err.count("'gone'") == 1
    assert len(files(bridge)) == 1


def test_a_refused_spill_keeps_its_own_reason_when_another_lane_writes_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A close deadline's spill is refused (the spool is full) and another lane's write
    succeeds before the refused one's caller looks at why (a thread switch): its events
    are dropped for its own write's reason, spool_full (they were kept, uncounted by the
    bridge, when the other write's success wiped a refusal shared by the spool)."""
    bridge, _ = bridge_for(tmp_path, max_bytes=1)  # full: every write refused
    channel, spool = filled(3), bridge.spool
    write = spool.write

    def racing(*args: object, **kwargs: object) -> object:
        refused = write(*args, **kwargs)  # type: ignore[arg-type]
        spool.max_bytes = 1 << 20  # another lane's write, which succeeds, lands now
        write(b"{}\n", 1, HOST, "other", (spool.identity, 99))
        spool.max_bytes = 1
        return refused

    monkeypatch.setattr(spool, "write", racing)
    assert bridge.give_up(channel, "at its close deadline") == 3
    assert channel.stats().dropped_by_reason == {"spool_full": 3}
