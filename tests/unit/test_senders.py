"""The sender threads and the same loop on a caller's thread: supervision, deadlines,
threads started on demand and stopped, and the recursion guard."""

from __future__ import annotations

import threading
import time

import pytest

from tinybird_export._lanes import Lane, LaneTable
from tinybird_export._senders import MAX_SENDERS, Senders, SendingThreads


class Loop:
    """A worker's step for the tests: sends ``work`` times, then has nothing due."""

    def __init__(self, work: int = 0, *, fails: int = 0) -> None:
        self.work, self.fails, self.steps = work, fails, 0
        self.reported: list[Exception] = []
        self.closed = 0
        self.stepped = threading.Event()
        self.threads: set[int] = set()

    def step(self, deadline: float | None) -> bool | float | None:
        """One step: raise (a bug), send, or nothing due."""
        self.steps += 1
        self.threads.add(threading.get_ident())
        self.stepped.set()
        if self.fails:
            self.fails -= 1
            raise RuntimeError("injected bug")
        if self.work:
            self.work -= 1
            return True
        return None

    def senders(self, guard: SendingThreads, *, background: bool = False) -> Senders:
        """Senders running this loop."""
        return Senders(
            self.step,
            guard,
            can_start=lambda: background,
            report=self.reported.append,
            closed=self.close,
        )

    def close(self) -> None:
        """Count the closes of the transport."""
        self.closed += 1


def test_the_loop_runs_here_until_done_marked_as_sending() -> None:
    """Without threads, the step runs on the calling thread until there is no work, and
    the thread counts as sending meanwhile (records it logs are dropped)."""
    guard = SendingThreads()
    loop = Loop(work=3)
    marked: list[bool] = []
    senders = loop.senders(guard)

    def done() -> bool:
        marked.append(threading.get_ident() in guard.idents)
        return loop.work == 0

    assert senders.wait_until(done, time.monotonic() + 5) is True
    assert loop.steps == 3 and loop.threads == {threading.get_ident()}
    assert marked[1:] == [True] * (len(marked) - 1)
    assert threading.get_ident() not in guard.idents


def test_a_step_that_raises_is_reported_and_the_loop_goes_on() -> None:
    """Supervised on the caller's thread too: the bug is reported, the work still done."""
    loop = Loop(work=2, fails=1)
    senders = loop.senders(SendingThreads())
    assert senders.run_here(lambda: loop.work == 0, time.monotonic() + 5)
    assert [str(e) for e in loop.reported] == ["injected bug"]


def test_a_caller_waits_no_longer_than_its_deadline() -> None:
    """Nothing due and not done: run_here gives up at the deadline."""
    loop = Loop()
    senders = loop.senders(SendingThreads())
    started = time.monotonic()
    assert senders.run_here(lambda: False, started + 0.05) is False
    assert time.monotonic() - started < 1


def test_a_thread_starts_on_demand_runs_the_loop_and_stops() -> None:
    """With background on, the first wait starts a thread (named for the package) that
    runs the loop; stop() ends it, and the last one closes the transport, once."""
    guard = SendingThreads()
    loop = Loop(work=5)
    senders = loop.senders(guard, background=True)
    assert senders.needed(lane_claimed=False)
    assert senders.wait_until(lambda: loop.work == 0, time.monotonic() + 10)
    assert senders.running == 1 and threading.get_ident() not in loop.threads
    (thread,) = [t for t in threading.enumerate() if t.ident in loop.threads]
    assert thread.name == "tinybird-export-worker" and thread.daemon
    senders.stop()
    thread.join(10)
    assert not thread.is_alive() and senders.running == 0 and loop.closed == 1


def test_a_second_thread_only_for_a_free_lane_while_every_thread_is_busy() -> None:
    """No thread: start one. Threads all busy (none idle): another for a free lane only,
    up to the maximum."""
    loop = Loop()
    senders = loop.senders(SendingThreads(), background=True)
    assert senders.needed(lane_claimed=True)  # none runs: whatever the lane
    senders.running = 1  # as if one were busy sending
    assert senders.needed(lane_claimed=False)
    assert not senders.needed(lane_claimed=True)
    senders.running = MAX_SENDERS
    assert not senders.needed(lane_claimed=False)
    senders.running = 0
    senders.stop()
    assert not senders.needed(lane_claimed=False)  # stopping: never


def test_the_guard_is_re_entrant() -> None:
    """A nested mark (a signal handler on a sending thread) leaves the outer one in place."""
    guard = SendingThreads()
    me = threading.get_ident()
    with guard.marked():
        with guard.marked():
            assert me in guard.idents
        assert me in guard.idents
    assert me not in guard.idents


def test_a_lane_table_counts_its_users() -> None:
    """A lane lives while a worker serves it; the last one to leave forgets it."""
    table = LaneTable()
    first = table.join("h", "ds", 1.0, True)
    assert table.join("h", "ds", 5.0, False) is first  # the first user's settings
    assert first.pacing.base == 1.0 and first.pacing.enabled
    table.leave(first)
    assert table.join("h", "ds", 1.0, True) is first
    table.leave(first)
    table.leave(first)
    assert table.join("h", "ds", 1.0, True) is not first


@pytest.mark.parametrize("draining", [False, True])
def test_a_lane_is_ready_after_its_pause_and_pacing(draining: bool) -> None:
    """ready_at: the pause, and the pacing's next start unless draining."""
    lane = Lane("h", "ds", 1.0, True)
    lane.paused_until = 10.0
    lane.pacing.spacing = 5.0
    lane.pacing.started(20.0)
    assert lane.ready_at(draining) == (10.0 if draining else 25.0)
