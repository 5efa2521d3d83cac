"""The process's memory budget, and the backpressure plan: which queued lines a record of a
higher level displaces, oldest first, with slack, and never below what it needs."""

from __future__ import annotations

import logging
import time

from tests.helpers import make_channel
from tinybird_export._backpressure import Plan, Planner, Shortfall, plan_room
from tinybird_export._batch import Batch
from tinybird_export._budget import MemoryBudget

INFO, WARNING, ERROR = logging.INFO, logging.WARNING, logging.ERROR


def batch(*levels: int, size: int = 10) -> Batch:
    """A batch of one line per level, each ``size`` bytes (newline not counted)."""
    body = b"".join(b"%d" % i + b"x" * (size - len(b"%d" % i)) + b"\n" for i in range(len(levels)))
    return Batch(bytearray(body), len(levels), bytearray(levels))


def test_the_budget_is_the_sum_of_the_open_channels_bounds() -> None:
    """Each open channel may hold its queue_max_bytes; a closed one adds nothing."""
    budget = MemoryBudget()
    a, b = make_channel(max_bytes=1000), make_channel(max_bytes=3000)
    budget.add(a)
    budget.add(b)
    assert budget.limit() == 4000
    a.close(time.monotonic() + 60)
    budget.rebalance()
    assert budget.limit() == 3000


def test_what_a_closed_channel_holds_comes_out_of_the_open_ones_in_proportion() -> None:
    """A handler replaced during an outage: its queue counts against the others' bounds,
    split by their share, until it is sent or given up."""
    budget = MemoryBudget()
    old, small, large = (make_channel(max_bytes=n) for n in (1000, 1000, 3000))
    for channel in (old, small, large):
        budget.add(channel)
    for _ in range(8):
        old.offer(b"x" * 100)
    old.close(time.monotonic() + 60)
    budget.rebalance()
    for channel in (small, large):
        for _ in range(40):
            channel.offer(b"y" * 100)
    assert small.held_bytes() == 800  # 1000 - 800 * 1/4
    assert large.held_bytes() == 2400  # 3000 - 800 * 3/4
    old.abandon("close_timeout")
    budget.remove(old)
    small.offer(b"z" * 100)
    assert small.held_bytes() == 900


def test_the_budget_never_gives_a_negative_allowance() -> None:
    """A closed channel holding more than the open bounds leaves them no room, not less."""
    budget = MemoryBudget()
    old, new = make_channel(max_bytes=10_000), make_channel(max_bytes=100)
    budget.add(old)
    for _ in range(50):
        old.offer(b"x" * 100)
    old.close(time.monotonic() + 60)
    budget.add(new)
    assert new.offer(b"y") is False
    assert new.stats().dropped_by_reason == {"queue_full": 1}


def test_lines_below_the_level_are_dropped_oldest_first() -> None:
    """An ERROR frees room from the oldest INFO lines, keeping the WARNINGs."""
    queue = [batch(INFO, WARNING, INFO), batch(INFO, ERROR)]
    plan = plan_room(queue, ERROR, 10, 0, bound_bytes=0, bound_events=0)
    assert isinstance(plan, Plan)
    assert (plan.events, plan.nbytes, dict(plan.levels)) == (1, 10, {INFO: 1})
    assert [b.levels for b in plan.ready] == [bytearray([WARNING, INFO]), bytearray([INFO, ERROR])]
    assert plan.ready[0].body.startswith(b"1x")  # line 0 went, line 1 stayed


def test_a_plan_frees_a_slack_of_the_bound_when_it_can() -> None:
    """Beyond the need, 1/64 of the bound, so the next warnings find room without a scan."""
    queue = [batch(*[INFO] * 100)]
    plan = plan_room(queue, WARNING, 10, 0, bound_bytes=64 * 50, bound_events=0)
    assert isinstance(plan, Plan) and plan.nbytes == 60  # 10 + 3200 / 64


def test_the_partial_batch_is_planned_too_and_handed_back_apart() -> None:
    """The last batch of the queue may be the partial one: it comes back as ``pending``."""
    queue = [batch(ERROR), batch(INFO, INFO)]
    plan = plan_room(queue, ERROR, 0, 2, bound_bytes=0, bound_events=0, has_pending=True)
    assert isinstance(plan, Plan)
    assert plan.pending is not None and plan.pending.count == 0
    assert [b.count for b in plan.ready] == [1]


def test_not_enough_below_the_level_is_a_shortfall_and_nothing_changes() -> None:
    """When the lines below the level would not meet the need, nothing is dropped: the
    new record is (the newest-dropped policy)."""
    queue = [batch(ERROR, INFO, ERROR)]
    assert plan_room(queue, ERROR, 20, 0, bound_bytes=0, bound_events=0) == Shortfall(1, 10)
    assert plan_room(queue, INFO, 1, 0, bound_bytes=0, bound_events=0) == Shortfall(0, 0)


def test_the_planner_does_not_scan_again_in_the_same_state() -> None:
    """A bound full of errors: the shortfall found is remembered until the queue changes
    (or forget), so each further error costs no scan."""
    planner, scans = Planner(), []

    def queue() -> tuple[list[Batch], bool]:
        scans.append(1)
        return [batch(ERROR, ERROR)], False

    args = (ERROR, 10, 0)
    assert planner.plan("state", queue, *args, bound_bytes=0, bound_events=0) is None
    assert planner.plan("state", queue, *args, bound_bytes=0, bound_events=0) is None
    assert len(scans) == 1
    assert planner.plan("other", queue, *args, bound_bytes=0, bound_events=0) is None
    planner.forget()
    assert planner.plan("other", queue, *args, bound_bytes=0, bound_events=0) is None
    assert len(scans) == 3


def test_a_channel_applies_the_plan_and_counts_by_level() -> None:
    """At the bound an ERROR displaces INFO lines (counted by level) and is queued."""
    channel = make_channel(max_events=3, rows=100)
    for _ in range(3):
        channel.offer(b"info", level=INFO)
    assert channel.offer(b"error", level=ERROR) is False  # not a new batch: no wake-up
    stats = channel.stats()
    assert stats.queued == 3 - 1 - 3 // 64 + 1
    assert stats.dropped_by_level == {"INFO": 1} and stats.dropped_by_reason == {"queue_full": 1}
    assert channel.offer(b"info", level=INFO) is False
    assert channel.stats().dropped_by_level == {"INFO": 2}
