"""asyncio: aflush and aclose wait on a thread, so the event loop keeps running."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.helpers import child_env, run_example, run_python
from tinybird_export import TinybirdEvents, TinybirdHandler
from tinybird_export._async import run_blocking
from tinybird_export.testing import EventsServer, Reply


async def while_ticking(work: Callable[[], Awaitable[Any]]) -> tuple[Any, float, int]:
    """Await ``work()`` while a task ticks every 10 ms: its result, the longest gap between
    two ticks (what a blocked loop would show) and the number of ticks.
    """
    ticks: list[float] = []
    ticking = asyncio.Event()

    async def tick() -> None:
        while True:
            ticks.append(time.monotonic())
            ticking.set()
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    await ticking.wait()  # work starts once the ticker runs
    try:
        result = await work()
    finally:
        ticker.cancel()
        ticks.append(time.monotonic())
    gaps = [later - earlier for earlier, later in itertools.pairwise(ticks)]
    return result, max(gaps), len(ticks)


class TestAflush:
    def test_aflush_delivers_and_returns_what_flush_returns(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """aflush() delivers what threads and coroutines logged, and returns True."""
        handler: TinybirdHandler = make_handler(flush_interval=60)
        logger.addHandler(handler)

        async def main() -> bool:
            await asyncio.gather(*(asyncio.to_thread(logger.info, "n %d", i) for i in range(50)))
            for i in range(50, 100):  # from coroutines: enqueueing never waits
                logger.info("n %d", i)
            return await handler.aflush(10)

        assert asyncio.run(main()) is True
        assert sorted(e["event"] for e in server.events()) == sorted(f"n {i}" for i in range(100))

    @pytest.mark.parametrize("producer", ["handler", "events"])
    def test_the_loop_keeps_running_while_aflush_waits_on_a_hanging_endpoint(
        self, server: EventsServer, make_handler: Any, make_events: Any, producer: str
    ) -> None:
        """While aflush() waits on a hanging endpoint, the event loop keeps ticking."""
        server.respond(Reply(hang=True))
        sender: TinybirdHandler | TinybirdEvents
        if producer == "handler":
            handler: TinybirdHandler = make_handler(timeout=30)
            handler.handle(logging.makeLogRecord({"msg": "stuck"}))
            sender = handler
        else:
            events: TinybirdEvents = make_events(timeout=30)
            events.send({"event": "stuck"})
            sender = events

        async def main() -> tuple[Any, float, int]:
            return await while_ticking(lambda: sender.aflush(2.0))

        started = time.monotonic()
        delivered, longest_gap, ticks = asyncio.run(main())
        elapsed = time.monotonic() - started
        assert delivered is False  # nothing acknowledged: the server never answered
        assert 2.0 <= elapsed < 6, elapsed  # returned by its timeout (generous on 2 cores)
        assert longest_gap < 1.0, longest_gap  # a blocked loop would show a 2 s gap
        assert ticks >= 10
        server.release()

    def test_aclose_does_not_block_the_loop_and_closes(
        self, server: EventsServer, make_handler: Any, make_events: Any
    ) -> None:
        """aclose() waits on threads, so the loop keeps ticking while both close."""
        server.respond(Reply(hang=True))
        handler = make_handler(flush_timeout=2, timeout=30)
        events = make_events(flush_timeout=2, timeout=30)
        handler.handle(logging.makeLogRecord({"msg": "stuck"}))
        events.send({"event": "stuck"})

        async def main() -> tuple[Any, float, int]:
            return await while_ticking(lambda: asyncio.gather(handler.aclose(), events.aclose()))

        _, longest_gap, _ = asyncio.run(main())
        assert longest_gap < 1.0, longest_gap  # blocking closes would show 2 s or more
        events.send({"event": "after close"})
        assert events.stats().dropped_by_reason.get("closed") == 1
        server.release()

    def test_2000_concurrent_aflush_calls_start_no_thread_and_never_stall_the_loop(
        self, server: EventsServer, make_events: Any
    ) -> None:
        """2,000 coroutines await aflush() at once while the endpoint answers slowly: no
        thread per call (1,800+ threads were started, and the loop stalled 1 s), the loop
        keeps ticking, and every call says True."""
        server.respond(Reply(delay=0.5))
        events: TinybirdEvents = make_events(flush_interval=60)
        threads: list[int] = []

        async def all_at_once() -> list[bool]:
            async def one(i: int) -> bool:
                events.send({"event": f"n {i}"})
                threads.append(threading.active_count())
                return await events.aflush(20)

            return await asyncio.gather(*(one(i) for i in range(2000)))

        async def sends_alone() -> list[None]:
            # The same 2,000 coroutines and sends, awaiting nothing: what the loop's own
            # work costs on this machine now (a loaded one stretches every gap).
            async def one(i: int) -> None:
                events.send({"event": f"before {i}"})
                await asyncio.sleep(0)

            return await asyncio.gather(*(one(i) for i in range(2000)))

        async def main() -> tuple[Any, float, int]:
            return await while_ticking(all_at_once)

        async def baseline() -> tuple[Any, float, int]:
            return await while_ticking(sends_alone)

        before = threading.active_count()
        _, baseline_gap, _ = asyncio.run(baseline())
        results, longest_gap, _ = asyncio.run(main())
        assert results == [True] * 2000
        assert max(threads) <= before + 4, (before, max(threads))  # its sender, at most
        # A thread started per call stalled the loop 1 s on an idle machine (and started
        # 1,800 threads: the check above); with aflush the longest gap is 1.6-1.8 times the
        # sends' alone (measured, load 6), and a loaded machine adds its own pauses.
        assert longest_gap < max(1.0, 6 * baseline_gap), (longest_gap, baseline_gap)
        assert len(server.events()) == 4000

    def test_aflush_never_runs_on_the_loop_when_no_thread_can_be_started(
        self, server: EventsServer
    ) -> None:
        """Under a pids limit (no new thread can start), aflush() waits on the sender that
        runs, the loop ticking (it ran the flush on the loop's own thread, frozen)."""
        server.script(Reply(), Reply(delay=1.0))  # the warm-up at once, then a slow answer
        result = run_python(
            """
            import asyncio, itertools, threading, time
            from tinybird_export import TinybirdEvents
            events = TinybirdEvents(datasource="pids", flush_interval=60)
            events.send({"event": "warm"}); assert events.flush(10)  # the sender runs
            def refuse(self):
                raise RuntimeError("can't start new thread")
            threading.Thread.start = refuse  # a container's pids limit, from now on
            async def main():
                ticks = []
                async def tick():
                    while True:
                        ticks.append(time.monotonic()); await asyncio.sleep(0.01)
                ticker = asyncio.create_task(tick()); await asyncio.sleep(0.05)
                events.send({"event": "slow"})
                done = await events.aflush(10)
                ticker.cancel()
                gap = max(b - a for a, b in itertools.pairwise(ticks + [time.monotonic()]))
                print(done, round(gap, 2))
            asyncio.run(main())
        """,
            child_env(server),
        )
        done, gap = result.stdout.split()
        assert done == "True", result.stderr
        assert float(gap) < 0.5, result.stdout  # the 1 s answer did not freeze the loop

    def test_on_trio_aflush_waits_without_a_thread(
        self, server: EventsServer, make_events: Any
    ) -> None:
        """On trio, aflush() is woken by the sender too: delivered, no thread started for
        the wait."""
        trio = pytest.importorskip("trio")
        server.respond(Reply(delay=0.2))
        events: TinybirdEvents = make_events(flush_interval=60)

        def os_threads() -> int:  # trio's to_thread threads are not in threading's list
            return len(os.listdir("/proc/self/task"))

        async def main() -> tuple[list[bool], int, int]:
            results: list[bool] = []
            counts: list[int] = []
            before = os_threads()

            async def one(i: int) -> None:
                events.send({"event": f"n {i}"})
                results.append(await events.aflush(10))
                counts.append(os_threads())  # while the others still wait

            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(one, i)
            return results, before, max(counts)

        results, before, most = trio.run(main)
        assert results == [True] * 200
        assert most <= before + 4, (before, most)  # the sender at most: no thread per call

    def test_async_with_sends_and_closes(self, server: EventsServer) -> None:
        """async with TinybirdEvents(...) sends on exit and closes."""

        async def main() -> TinybirdEvents:
            async with TinybirdEvents(
                datasource="simple_events", host=server.url, token=server.token, flush_interval=60
            ) as events:
                events.send({"event": "page_view"})
            return events

        events = asyncio.run(main())
        assert [e["event"] for e in server.events("simple_events")] == ["page_view"]
        assert events.stats().sent == 1


class TestRunBlocking:
    def test_result_and_exception_come_back_to_the_coroutine(self) -> None:
        """run_blocking runs off the loop and hands back its result or exception."""

        async def main() -> None:
            assert await run_blocking(threading.get_ident) != threading.get_ident()
            with pytest.raises(ZeroDivisionError):
                await run_blocking(lambda: 1 / 0)

        asyncio.run(main())

    def test_concurrent_calls_share_a_few_threads(self) -> None:
        """50 concurrent blocking calls run on at most 4 shared threads, never the loop's,
        and each result comes back to its own coroutine."""

        def work(i: int) -> tuple[int, int]:
            time.sleep(0.02)
            return i, threading.get_ident()

        async def main() -> list[tuple[int, int]]:
            calls = [functools.partial(work, i) for i in range(50)]
            return await asyncio.gather(*(run_blocking(call) for call in calls))

        results = asyncio.run(main())
        assert [i for i, _ in results] == list(range(50))
        threads = {ident for _, ident in results}
        assert len(threads) <= 4 and threading.get_ident() not in threads

    def test_a_cancelled_await_leaves_the_call_to_finish_on_its_own(self) -> None:
        """A cancelled await lets the blocking call finish by itself, no error."""
        finished = threading.Event()
        release = threading.Event()

        def slow() -> int:
            release.wait(10)
            finished.set()
            return 1

        async def main() -> None:
            waiting = asyncio.create_task(run_blocking(slow))
            await asyncio.sleep(0)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting

        asyncio.run(main())  # the loop is closed before the call ends
        release.set()
        assert finished.wait(10)  # and the thread ended without an error

    def test_on_trio_it_runs_on_a_thread_too(self) -> None:
        """On trio, run_blocking runs the call on another thread too."""
        trio = pytest.importorskip("trio")

        async def main() -> int:
            return await run_blocking(threading.get_ident)

        assert trio.run(main) != threading.get_ident()

    def test_without_a_running_asyncio_loop_it_still_returns(self) -> None:
        """Under an unknown event loop, run_blocking still returns the result."""
        call: Callable[[], int] = lambda: 7  # noqa: E731
        coroutine = run_blocking(call)
        with pytest.raises(StopIteration) as stopped:
            coroutine.send(None)  # driven by hand, as an unknown event loop would
        assert stopped.value.value == 7


def test_asyncio_example_runs_against_the_local_server() -> None:
    """examples/asyncio_app.py runs as written and delivers everything."""
    result = run_example("asyncio_app.py")
    assert result.returncode == 0, result.stderr
    assert "log events acknowledged: True; page events: 20 sent" in result.stdout
    assert "select count() from asyncio_logs: 20" in result.stdout
    assert "select count() from asyncio_events: 20" in result.stdout
    assert result.stderr == ""
