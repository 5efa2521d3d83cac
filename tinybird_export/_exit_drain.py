"""The exit drain: what is queued is sent within the exit budget, then spooled or reported.

One ``ExitDrain``, owned by the process, holds the exit's state: its deadline (fixed by the
first call: the longest ``exit_timeout`` of the producers, or the budget given), which
thread is draining, and whether ``logging.shutdown`` is still to come. The drain runs on the
exiting thread (the sender threads, if alive, keep sending meanwhile) and never starts a
thread (peers.md §3 row 5: OpenTelemetry's thread-at-shutdown bug). Events that arrive once
the drain is over are late: sent on their own thread within what is left of the budget, or
counted and said.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

from tinybird_export import _diagnostics
from tinybird_export._channel import Channel
from tinybird_export._delivery_messages import give_up, report_internal_error
from tinybird_export._worker import Worker


class ExitDrain:
    """The process's exit (one instance, owned by ``_process.Process``).

    Args:
        workers: The process's workers now.
        signals_held: Holds SIGINT and SIGTERM during the drain (``Sigterm.held``): they
            end the process once it has spooled and reported.
    """

    def __init__(
        self,
        workers: Callable[[], list[Worker]],
        signals_held: Callable[..., AbstractContextManager[None]],
    ) -> None:
        self._workers = workers
        self._signals_held = signals_held
        self.after_fork_in_child()

    def after_fork_in_child(self) -> None:
        """A new process: not exiting (at construction too)."""
        # Re-entrant: a signal handler may end the process while this thread holds it.
        self._lock = threading.RLock()
        self._deadline: float | None = None
        self._budget = 0.0
        self._thread: int | None = None  # the thread running the drain
        self._logging_shutdown_next = False  # the interpreter's atexit ran the drain

    def deadline(self) -> float | None:
        """When the exit budget runs out, once the process is exiting; else ``None``."""
        return self._deadline

    def exiting(self) -> bool:
        """Whether the exit drain has begun (no thread may start then)."""
        return self._deadline is not None

    def run(self, budget: float | None = None) -> bool:
        """Send what is queued within the exit budget, spool or report what could not be
        sent; whether nothing was left undelivered. The first call fixes the deadline
        (``budget``, default the longest ``exit_timeout`` of the producers); later calls
        (records logged by later hooks) send within what is left of it.
        """
        workers = self._workers()
        if not workers:
            return True
        deadline = self._begin(workers, budget)
        with self._lock:
            outer, self._thread = self._thread, threading.get_ident()
        spooled_before = {id(c): c.spooled_count() for w in workers for c in w.channels()}
        spooled = lost = 0
        try:
            with self._signals_held(process_ending=self._logging_shutdown_next):
                try:
                    drain(workers, deadline)
                finally:  # whatever stopped it (a signal not held): spool, then report
                    spooled = _spill_at_exit(workers, spooled_before)
                    lost = self._report(workers, deadline)
        finally:
            self._thread = outer
        return not (spooled or lost)

    def _report(self, workers: list[Worker], deadline: float) -> int:
        channels = [c for w in workers for c in w.channels()]
        when = f"exit budget {self._budget:g} s"
        refusing = [w.host for w in workers if w.refused_for() is not None]
        paused = [name for w in workers for name in w.paused_past(deadline)]
        if refusing:
            when += f", not waited out: nothing accepts connections at {', '.join(refusing)}"
        elif paused:
            when += f", not waited out: the server asked to wait past it for {', '.join(paused)}"
        return give_up(channels, f"at exit ({when})")

    def at_interpreter_exit(self) -> bool:
        """Whether the interpreter is exiting: its ``atexit`` runs the drain."""
        return self._logging_shutdown_next

    def before_logging_shutdown(self) -> None:
        """The interpreter's ``atexit`` runs the drain: ``logging.shutdown`` comes next,
        and closes the handlers (sending what they got after the drain, in one batch).
        """
        self._logging_shutdown_next = True

    def send_late(self, worker: Worker, channel: Channel, *, flushed_by_logging: bool) -> None:
        """``channel`` got an event once the process is exiting. During the drain, the
        drain sends it. After it, nothing else will: it is sent now, on this thread (the
        sender threads may be gone: a multiprocessing child's finalizer, the interpreter's
        teardown), within what is left of the exit budget, and what cannot be is counted
        and said, with why. A handler's events wait for ``logging.shutdown`` when it is
        still to come (it closes the handler: one batch for all of them).
        """
        if self._thread is not None:
            return  # an exit drain is running: it sends until every queue is empty
        finalizing = sys.is_finalizing()
        if flushed_by_logging and self._logging_shutdown_next and not finalizing:
            return
        deadline = self._deadline
        if deadline is None:
            return
        if finalizing and (_modules_torn_down() or not worker.can_send_here(channel)):
            give_up(
                [channel],
                "after the exit drain",
                "after_exit",
                "logged during the interpreter's teardown: nothing can be sent any more",
            )
        elif not worker.send_here(channel, deadline):
            give_up(
                [channel],
                f"after the exit drain (exit budget {self._budget:g} s)",
                first="the exit budget had run out",
            )

    def cap(self, timeout: float) -> float:
        """``timeout``, bounded by what is left of the exit budget once the process exits.

        The exit begins with the first of: the package's ``atexit`` drain, or a call made
        on the main thread after it finished (``atexit`` hooks registered after the package
        was imported run before its drain: OpenTelemetry's providers pass ~30 s into each
        exporter's ``shutdown`` there).
        """
        deadline = self._deadline
        if deadline is None:
            main = threading.main_thread()
            if threading.current_thread() is not main or main.is_alive():
                return timeout
            deadline = self._begin(self._workers(), None)
        return max(0.0, min(timeout, deadline - time.monotonic()))

    def _begin(self, workers: list[Worker], budget: float | None) -> float:
        with self._lock:
            if self._deadline is None:
                if budget is None:
                    budget = max((w.settings.exit_timeout for w in workers), default=0.0)
                self._budget = budget
                self._deadline = time.monotonic() + budget
            return self._deadline


def drain(workers: Iterable[Worker], deadline: float) -> None:
    """Make every queued event due and wait for the workers until ``deadline``."""
    workers = list(workers)
    for worker in workers:
        worker.hurry()
    for worker in workers:
        worker.drain(deadline)


def _spill_at_exit(workers: list[Worker], spooled_before: dict[int, int]) -> int:
    """What the drain could not send goes to the spool, where there is one (failing lanes
    spilled during the drain already): say how much, and where; how many events were
    spooled, or refused by the spool (and dropped).
    """
    total = 0
    for worker in workers:
        try:
            total += worker.spill_remaining()
        except Exception as exc:  # noqa: BLE001 - a bug: said once, the exit goes on
            report_internal_error(exc, "")
        written: dict[str, int] = {}
        for channel in worker.channels():
            count = channel.spooled_count() - spooled_before.get(id(channel), 0)
            if count:
                written[channel.datasource] = written.get(channel.datasource, 0) + count
        if written and worker.spool is not None:
            total += sum(written.values())
            per = "; ".join(f"{count} for {name!r}" for name, count in written.items())
            _diagnostics.say(
                f"{sum(written.values())} event(s) not delivered at exit were spooled to "
                f"{worker.spool.directory} ({per}): the next process started with this "
                "spool_dir sends them."
            )
    return total


def _modules_torn_down() -> bool:
    """Whether the interpreter's teardown has begun destroying modules: the import system
    is gone (``sys.meta_path`` is None), and with it urllib3's lazy imports (a request
    would be sent and its answer never read). Before that, the teardown's first garbage
    collection runs ``__del__`` methods while a request can still be made.
    """
    return sys.meta_path is None
