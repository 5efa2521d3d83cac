"""Awaiting a blocking call without blocking the event loop: ``aflush``, ``aclose`` and the
ASGI middleware's lifespan flush.

The call runs on a thread of its own rather than on the loop's default executor: that pool
is small (``min(32, cores + 4)`` threads) and an application may keep it busy with its own
blocking work, which would delay a flush by as long; a flush is rare, and a thread costs
tens of microseconds. The thread ends with the call, which is bounded by its own timeout,
so a cancelled await leaves nothing behind for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")

THREAD_NAME = "tinybird-export-await"


async def run_blocking(function: Callable[[], _T]) -> _T:
    """The result of ``function()``, run on its own thread while the loop runs on.

    On asyncio, the thread hands the result back with ``call_soon_threadsafe``; on trio,
    ``trio.to_thread.run_sync`` runs it; under any other loop it runs on the caller's
    thread: a wait bounded by the call's own timeout rather than an error. Exceptions from
    ``function`` are raised to the awaiting coroutine.
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

    try:
        threading.Thread(target=run, name=THREAD_NAME, daemon=True).start()
    except RuntimeError:  # "can't create new thread at interpreter shutdown"
        return function()
    return await future


def _in_trio() -> bool:
    trio: Any = sys.modules.get("trio")  # never imported here: only if the app runs on it
    if trio is None:
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True
