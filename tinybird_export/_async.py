"""Awaiting the delivery core without blocking the event loop: ``aflush``, ``aclose`` and
the ASGI middleware's lifespan flush.

An awaited flush needs no thread of its own (``until``): the sender threads already do the
work, and the one that makes the flush's progress wakes the coroutine through the loop's
own thread-safe call (asyncio's ``call_soon_threadsafe``, trio's ``run_sync_soon``), while
a timer on the loop ends the wait at its timeout. 2,000 concurrent ``aflush()`` calls are
2,000 futures, not 2,000 threads (they were: 1,800 threads and a 1 s stall of the loop).

What must block a thread (``background=False`` sends on the calling thread; the
process-wide flush) runs on a small pool shared by the process (``run_blocking``, at most
``MAX_THREADS``, each gone after a minute idle) rather than the loop's default executor,
which the application may keep busy: a flush is rare and bounded by its own timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any, Final, TypeVar

_T = TypeVar("_T")

THREAD_NAME: Final = "tinybird-export-await"
MAX_THREADS: Final = 4
_IDLE_SECONDS: Final = 60.0

Watch = Callable[[Callable[[], None]], Callable[[], None]]
"""Registers a call to make (on a sending thread) once the awaited condition may hold;
returns how to unregister it (``Worker.watch`` with the condition bound)."""


async def until(done: Callable[[], bool], watch: Watch, timeout: float) -> bool:
    """Whether ``done()`` holds within ``timeout`` seconds, waiting for the signal of the
    thread that makes progress: on asyncio and trio, with no thread and without blocking
    the loop; under any other loop, on the caller's thread (bounded by ``timeout``).
    """
    if done():
        return True
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        if _in_trio():
            return await _trio_until(done, watch, timeout)
        return _poll(done, watch, timeout)
    future: asyncio.Future[None] = loop.create_future()

    def settle() -> None:
        if not future.done():
            future.set_result(None)

    def signalled() -> None:  # on a sender thread
        with contextlib.suppress(RuntimeError):  # the loop was closed: nobody waits
            loop.call_soon_threadsafe(settle)

    stop = watch(signalled)
    timer = loop.call_later(max(timeout, 0.0), settle)
    try:
        if not done():  # it may have held before the watch was in place
            await future
        return done()
    finally:
        timer.cancel()
        stop()


async def _trio_until(done: Callable[[], bool], watch: Watch, timeout: float) -> bool:
    trio: Any = sys.modules["trio"]
    token = trio.lowlevel.current_trio_token()
    event = trio.Event()

    def signalled() -> None:  # on a sender thread
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(event.set)

    stop = watch(signalled)
    try:
        if not done():
            with trio.move_on_after(max(timeout, 0.0)):
                await event.wait()
        return done()
    finally:
        stop()


def _poll(done: Callable[[], bool], watch: Watch, timeout: float) -> bool:
    """An unknown event loop: wait on this thread for the signal, at most ``timeout``."""
    signal = threading.Event()
    stop = watch(signal.set)
    try:
        if not done():
            signal.wait(max(timeout, 0.0))
        return done()
    finally:
        stop()


async def run_blocking(function: Callable[[], _T]) -> _T:
    """The result of ``function()``, run on the shared pool while the loop runs on.

    On asyncio, the pool's thread hands the result back with ``call_soon_threadsafe``; on
    trio, ``trio.to_thread.run_sync`` runs it (trio's own bounded threads); under any other
    loop, or when no thread can be had at all (a container's pids limit), it runs on the
    caller's thread: a wait bounded by the call's own timeout rather than an error.
    Exceptions from ``function`` are raised to the awaiting coroutine.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        if _in_trio():
            trio: Any = sys.modules["trio"]
            return await trio.to_thread.run_sync(function)  # type: ignore[no-any-return]
        return function()
    future: asyncio.Future[_T] = loop.create_future()

    def settle(result: _T | None, error: BaseException | None) -> None:
        if future.done():  # the await was cancelled
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        result: _T | None = None
        error: BaseException | None = None
        try:
            result = function()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop was closed: nobody is waiting
            loop.call_soon_threadsafe(settle, result, error)

    if not _POOL.submit(run):
        return function()
    return await future


class _Pool:
    """At most ``MAX_THREADS`` daemon threads taking calls from one queue, started when a
    call finds none idle, each ending after a minute without work.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._threads = self._waiting = self._idle = 0

    def submit(self, call: Callable[[], None]) -> bool:
        """Queue ``call``; False if no thread can run it (none could be started)."""
        if self._pid != os.getpid():  # a forked child: the parent's threads are not here
            self._reset()
        with self._lock:
            self._waiting += 1
            self._calls.put(call)
            if self._waiting <= self._idle or self._threads >= MAX_THREADS:
                return True
            self._threads += 1
        try:
            threading.Thread(target=self._run, name=THREAD_NAME, daemon=True).start()
        except RuntimeError:  # "can't start new thread": a pids limit, or shutdown
            with self._lock:
                self._threads -= 1
                if self._threads:
                    return True  # a running thread will take it
                self._waiting -= 1
                with contextlib.suppress(queue.Empty):
                    self._calls.get_nowait()  # ours: nothing else is queued without a thread
            return False
        return True

    def _run(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            try:
                call = self._calls.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    self._idle -= 1
                    if self._waiting == 0:
                        self._threads -= 1
                        return
                continue
            with self._lock:
                self._idle -= 1
                self._waiting -= 1
            call()


_POOL = _Pool()


def _in_trio() -> bool:
    trio: Any = sys.modules.get("trio")  # never imported here: only if the app runs on it
    if trio is None:
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True
