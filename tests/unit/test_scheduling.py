"""The scheduler at a given time: what goes next, fairness between lanes and channels, the
pause and pacing gates, close deadlines, spool files first, and lanes shared by workers."""

from __future__ import annotations

import time

from tests.helpers import make_channel
from tinybird_export._batch import Batch
from tinybird_export._delivery import MemorySource
from tinybird_export._lanes import Lane, LaneTable
from tinybird_export._scheduler import BUSY, Claim, Scheduler

HOST = "http://127.0.0.1:9"


def scheduler(table: LaneTable | None = None, woken: list[int] | None = None) -> Scheduler:
    """A scheduler on its own lane table; ``woken`` counts its wake-ups."""
    calls = woken if woken is not None else []
    return Scheduler(HOST, table or LaneTable(), lambda: calls.append(1))


def claimed(pick_claim: Claim | None) -> tuple[Lane, MemorySource]:
    """The claim's lane and memory source (the test fails if there is none)."""
    assert pick_claim is not None
    assert isinstance(pick_claim.source, MemorySource)
    return pick_claim.lane, pick_claim.source


def later() -> float:
    """A time after every partial batch made so far is due (interval 1 s)."""
    return time.monotonic() + 5


def test_a_partial_batch_waits_for_its_interval_then_is_claimed() -> None:
    """Before its interval a partial batch gives the time it is due; after it, a claim."""
    plan = scheduler()
    channel = make_channel(interval=1.0)
    plan.add(channel, adaptive=True)
    channel.offer(b"x")
    now = time.monotonic()
    pick = plan.claim(now, draining=False)
    assert pick.claim is None and pick.due_at is not None and now < pick.due_at <= now + 1
    lane, source = claimed(plan.claim(pick.due_at, draining=False).claim)
    assert source.count == 1 and lane.busy


def test_nothing_queued_means_nothing_due() -> None:
    """An empty channel gives neither a claim nor a time: the worker sleeps until woken."""
    plan = scheduler()
    plan.add(make_channel(), adaptive=True)
    assert plan.claim(later(), draining=False)[:2] == (None, None)


def test_a_flush_or_the_exit_makes_a_partial_batch_due_at_once() -> None:
    """A flush mark, or the exit drain, needs no interval to pass."""
    plan = scheduler()
    flushed, drained = make_channel("a", interval=60), make_channel("b", interval=60)
    for channel in (flushed, drained):
        plan.add(channel, adaptive=True)
        channel.offer(b"x")
    flushed.request_flush()
    now = time.monotonic()
    lane, source = claimed(plan.claim(now, draining=False).claim)
    assert source.channel is flushed
    plan.release(lane)
    _, source = claimed(plan.claim(now, draining=True).claim)
    assert source.channel is drained


def test_lanes_take_turns() -> None:
    """With two data sources always due, claims alternate between their lanes."""
    plan = scheduler()
    channels = [make_channel("a", rows=1), make_channel("b", rows=1)]
    for channel in channels:
        plan.add(channel, adaptive=True)
        for _ in range(3):
            channel.offer(b"x")
    order = []
    for _ in range(4):
        lane, source = claimed(plan.claim(later(), draining=False).claim)
        order.append(lane.datasource)
        source.sent(0, 0)
        plan.release(lane)
    assert order == ["a", "b", "a", "b"]


def test_the_channels_of_one_lane_take_turns() -> None:
    """Two producers of one data source share its lane, one batch each in turn."""
    plan = scheduler()
    first, second = make_channel("ds", rows=1), make_channel("ds", rows=1)
    for channel in (first, second):
        plan.add(channel, adaptive=True)
        channel.offer(b"1")
        channel.offer(b"2")
    order = []
    for _ in range(4):
        lane, source = claimed(plan.claim(later(), draining=False).claim)
        order.append(source.channel)
        source.sent(0, 0)
        plan.release(lane)
    assert order == [first, second, first, second]
    assert len(plan.lanes()) == 1


def test_a_claimed_lane_is_skipped_and_its_release_wakes_the_skipper() -> None:
    """One request in flight per lane: a second claim finds nothing, and is woken when the
    lane is free again."""
    woken: list[int] = []
    plan = scheduler(woken=woken)
    channel = make_channel(rows=1)
    plan.add(channel, adaptive=True)
    channel.offer(b"1")
    channel.offer(b"2")
    lane, _ = claimed(plan.claim(later(), draining=False).claim)
    assert plan.claim(later(), draining=False).claim is None
    assert woken == []
    plan.release(lane)
    assert woken == [1]
    assert not lane.busy


def test_a_paused_lane_is_due_when_its_pause_ends_even_at_exit() -> None:
    """The pause after a retryable failure holds, at exit too (Retry-After)."""
    plan = scheduler()
    channel = make_channel()
    plan.add(channel, adaptive=True)
    channel.offer(b"x")
    now = later()
    lane = plan.lane("ds")
    assert lane is not None
    lane.paused_until = now + 3
    for draining in (False, True):
        pick = plan.claim(now, draining=draining)
        assert pick.claim is None and pick.due_at == now + 3
        assert not lane.busy  # looked at, not kept
    assert plan.claim(now + 3, draining=False).claim is not None


def test_pacing_spaces_requests_but_not_at_exit() -> None:
    """The rate limit's spacing gates the next (partial) request, except in the exit drain."""
    plan = scheduler()
    channel = make_channel()
    plan.add(channel, adaptive=True)
    channel.offer(b"1")
    now = later()
    lane, source = claimed(plan.claim(now, draining=False).claim)
    lane.pacing.started(now)
    lane.pacing.answered(429, {}, now)  # spacing: one flush_interval
    source.retry("429")
    plan.release(lane)
    assert plan.claim(now + 0.5, draining=False).due_at == now + 1.0
    assert plan.claim(now + 0.5, draining=True).claim is not None


def test_a_full_batch_is_not_paced_while_a_partial_one_waits() -> None:
    """Pacing spaces partial batches only: a batch sealed at its row limit goes at once,
    and the partial one of another channel of the lane still waits for the spacing."""
    plan = scheduler()
    full, partial = make_channel(rows=2), make_channel(rows=100)
    plan.add(full, adaptive=True)
    plan.add(partial, adaptive=True)
    now = later()
    lane = plan.lane("ds")
    assert lane is not None
    lane.pacing.started(now)
    for _ in range(3):
        lane.pacing.answered(429, {}, now)  # spacing: four flush intervals
    partial.offer(b"p")
    assert plan.claim(now + 1.5, draining=False).due_at == now + 4.0
    full.offer(b"1")
    full.offer(b"2")  # sealed at its row limit: full
    got = plan.claim(now + 1.5, draining=False).claim
    assert got is not None and got.source.channel is full
    plan.release(got.lane)
    assert plan.claim(now + 1.5, draining=False).due_at == now + 4.0


def test_adaptive_false_never_paces() -> None:
    """A lane made with adaptive=False keeps no spacing, whatever the answers."""
    plan = scheduler()
    plan.add(make_channel(), adaptive=False)
    lane = plan.lane("ds")
    assert lane is not None
    lane.pacing.answered(429, {}, 0.0)
    assert lane.ready_at(draining=False) == lane.paused_until == 0.0


def test_the_send_interval_grows_with_the_spacing() -> None:
    """A partial batch waits the longer of flush_interval and the pacing's spacing."""
    plan = scheduler()
    channel = make_channel(interval=1.0)
    plan.add(channel, adaptive=True)
    lane = plan.lane("ds")
    assert lane is not None
    for _ in range(3):
        lane.pacing.answered(429, {}, 0.0)
    channel.offer(b"x")
    now = time.monotonic()
    due_at = plan.claim(now, draining=False).due_at
    assert due_at is not None and now + 3 < due_at <= now + 4  # 4 s spacing, not 1 s


def test_closed_channels_are_finished_when_empty_or_past_their_deadline() -> None:
    """A closed channel is handed back to be detached once empty or at its deadline; until
    then its deadline is a time the worker wakes at."""
    plan = scheduler()
    empty, pending, expired = make_channel("a"), make_channel("b"), make_channel("c")
    now = later()
    for channel in (empty, pending, expired):
        plan.add(channel, adaptive=True)
    pending.offer(b"x")
    expired.offer(b"x")
    empty.close(now + 10)
    pending.close(now + 10)
    expired.close(now - 1)
    pick = plan.claim(now, draining=False)
    assert pick.claim is not None and pick.claim.source.channel is pending  # closed: due now
    finished = {id(channel) for channel in pick.finished}  # those looked at before it
    plan.release(pick.claim.lane)
    pick.claim.source.sent(0, 0)
    pick = plan.claim(now, draining=False)
    assert pick.claim is None and pick.due_at is None  # nothing left but finished ones
    finished |= {id(channel) for channel in pick.finished}
    assert finished == {id(empty), id(pending), id(expired)}  # pending: empty now
    before = plan.claim(now - 5, draining=False)  # before its deadline: it still sends
    assert id(expired) not in {id(c) for c in before.finished}
    assert before.claim is not None and before.claim.source.channel is expired


def test_a_lanes_spool_file_goes_before_its_memory() -> None:
    """The spill bridge's claimed file is sent first; while the bridge works on the lane,
    its memory waits (the data source's order holds across memory and disk)."""
    plan = scheduler()
    channel = make_channel(rows=1)
    plan.add(channel, adaptive=True)
    channel.offer(b"x")
    spooled = MemorySource(make_channel(), make_batch())
    pick = plan.claim(later(), draining=False, first=lambda lane: spooled)
    assert pick.claim is not None and pick.claim.source is spooled
    plan.release(pick.claim.lane)
    pick = plan.claim(later(), draining=False, first=lambda lane: BUSY)
    assert pick.claim is None and not channel.empty()
    assert claimed(plan.claim(later(), draining=False, first=lambda lane: None).claim)


def test_workers_share_the_lanes_of_a_host_and_data_source() -> None:
    """Two workers (two tokens) on one host and data source: one lane, so one request in
    flight between them, and the other is woken when it is released."""
    table, woken = LaneTable(), list[int]()
    first, second = scheduler(table), scheduler(table, woken)
    for plan in (first, second):
        channel = make_channel(rows=1)
        plan.add(channel, adaptive=True)
        channel.offer(b"x")
    lane, _ = claimed(first.claim(later(), draining=False).claim)
    assert second.lane("ds") is lane
    assert second.claim(later(), draining=False).claim is None
    first.release(lane)
    assert woken == [1]
    assert second.claim(later(), draining=False).claim is not None


def test_a_lane_is_forgotten_with_its_last_channel() -> None:
    """Removing a lane's last channel (on every worker) drops the lane from the table."""
    table = LaneTable()
    plan = scheduler(table)
    a, b = make_channel("ds"), make_channel("ds")
    plan.add(a, adaptive=True)
    plan.add(b, adaptive=True)
    lane = plan.lane("ds")
    assert plan.remove(a) is True
    assert plan.lane("ds") is lane
    assert plan.remove(b) is False
    assert plan.lane("ds") is None
    assert table.join(HOST, "ds", 1.0, True) is not lane  # made anew


def make_batch() -> Batch:
    """One line in flight, as a stand-in for a spool file's source."""
    channel = make_channel("spooled")
    channel.offer(b"spooled")
    batch = channel.take(time.monotonic(), 0, True)
    assert isinstance(batch, Batch)
    return batch
