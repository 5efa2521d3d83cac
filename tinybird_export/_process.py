"""The one owner of what is process-wide: workers, sending threads, exit, fork, memory.

``PROCESS`` holds the registry of workers (one per host, token and transport), the set of
threads that are sending (the recursion guard), the exit deadline, the memory budget, and
every hook into the interpreter: one ``atexit`` drain, one fork hook that resets the
child's state in a fixed order, and multiprocessing's finalizer. No other module changes
this state; they call its methods.

Exit: ``atexit`` runs hooks last-registered-first, and this module registers after
``logging`` was imported, so the drain runs before ``logging.shutdown`` closes handlers.
The drain runs on the exiting thread (the worker threads, if alive, keep sending meanwhile)
and never starts a thread (peers.md §3 row 5: OpenTelemetry's thread-at-shutdown bug).

Fork: no lock of this package is held across ``fork()``: a ``before`` hook registered by
the application (which may log) can then never deadlock on one. The child forgets the
parent's queues (the parent sends them), builds new locks, pools and threads lazily, and
redraws its event-id prefix.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from typing import Final

from tinybird_export import _diagnostics, _fields
from tinybird_export._budget import MemoryBudget
from tinybird_export._channel import Channel
from tinybird_export._config import TinybirdConfig
from tinybird_export._spool import Spool
from tinybird_export._worker import Worker

_REDELIVER_DELAY: Final = 0.01  # seconds: an offer takes microseconds
_REDELIVER_MAX: Final = 100  # then drain anyway (a thread stuck inside an offer)

# Every logger urllib3 creates a record on (logging.getLogger(__name__) in its modules).
_URLLIB3_LOGGERS: Final = (
    "urllib3",
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.poolmanager",
    "urllib3.response",
    "urllib3.util.retry",
    "urllib3.contrib.pyopenssl",
    "urllib3.http2.connection",
)


class Process:
    """Process-wide state and its hooks; one instance, ``PROCESS``."""

    def __init__(self) -> None:
        self.sending_threads: set[int] = set()
        """Threads sending right now: records they create are dropped by the handler."""
        self.budget = MemoryBudget()
        self._workers: dict[tuple[object, ...], Worker] = {}
        self._spools: dict[str, Spool] = {}
        self._reset_locks()
        self._exit_deadline: float | None = None
        self._exiting_thread: int | None = None  # the thread running exit()
        self._deferred_signal = 0
        self._redelivered = 0  # consecutive re-deliveries of a signal (see redeliver_...)
        self._multiprocessing_hooked = False
        self._finalizer_pid = 0

    def _reset_locks(self) -> None:
        # Re-entrant: a signal handler that logs may run while this thread holds it.
        self._lock = threading.RLock()

    # -- the registry of workers ---------------------------------------------------------

    def attach(self, config: TinybirdConfig, channel: Channel) -> Worker:
        """The shared worker for ``config``'s host, token and transport, with ``channel``."""
        key = (
            config.host,
            config.token,
            config.compression,
            config.connect_timeout,
            config.timeout,
            config.ca_bundle,
            config.background,
            config.adaptive,
            config.spool_dir,
            config.spool_max_bytes,
        )
        with self._lock:
            worker = self._workers.get(key)
            if worker is None:
                worker = self._workers[key] = Worker(config, self)
            worker.add(channel)
            self.budget.add(channel)
        worker.resume_spool(channel)
        self._hook_multiprocessing()
        self._guard_urllib3_loggers()
        return worker

    def detach(self, worker: Worker, channel: Channel) -> None:
        """Remove ``channel``; the worker stops when its last channel is gone."""
        with self._lock:
            self.budget.remove(channel)
            if worker.remove(channel):
                return
            self._workers = {k: w for k, w in self._workers.items() if w is not worker}
        worker.stop()

    def workers(self) -> list[Worker]:
        """The workers of this process."""
        with self._lock:
            return list(self._workers.values())

    def _guard_urllib3_loggers(self) -> None:
        """Drop the records that urllib3 creates on a sending thread, before any handler.

        ``TinybirdHandler.handle`` drops records created on a sending thread, but only when
        it runs on that thread: behind a ``QueueHandler`` it runs on the listener's, and
        OpenTelemetry's ``LoggingHandler`` is not ours. Logger filters run in the creating
        thread's ``Logger.handle``, before any handler, and change neither levels nor
        propagation.
        """
        for name in _URLLIB3_LOGGERS:
            logger = logging.getLogger(name)
            if self._drop_own_sends not in logger.filters:
                logger.addFilter(self._drop_own_sends)

    def _drop_own_sends(self, record: logging.LogRecord) -> bool:
        return threading.get_ident() not in self.sending_threads

    def spool(self, directory: str, max_bytes: int) -> Spool:
        """The process's one ``Spool`` for ``directory`` (it releases dead processes' claims
        when it first scans, so there must be only one per process).
        """
        with self._lock:
            spool = self._spools.get(directory)
            if spool is None:
                spool = self._spools[directory] = Spool(directory, max_bytes)
            return spool

    # -- exit ----------------------------------------------------------------------------

    def exit_deadline(self) -> float | None:
        """When the exit budget runs out, once the process is exiting; else ``None``."""
        return self._exit_deadline

    def exiting(self) -> bool:
        """Whether the exit drain has begun (no thread may start then)."""
        return self._exit_deadline is not None

    def exit(self) -> None:
        """Send what is queued within the exit budget, then report what could not be sent.

        The first call fixes the deadline (the longest ``exit_timeout`` of the producers);
        later calls (records logged by later hooks) send within what is left of it.
        """
        workers = self.workers()
        if not workers:
            return
        deadline = self._begin_exit(workers)
        with self._lock:
            outer, self._exiting_thread = self._exiting_thread, threading.get_ident()
        spooled_before = {id(c): c.spooled_count() for w in workers for c in w.channels()}
        try:
            self.drain(workers, deadline)
            self._spill_at_exit(workers, spooled_before)
            budget_text = f"exit budget {max(w.exit_timeout for w in workers):g} s"
            refusing = [w.host for w in workers if w.refused_for() is not None]
            if refusing:
                budget_text += (
                    f", not waited out: nothing accepts connections at {', '.join(refusing)}"
                )
            report_undelivered(
                [c for w in workers for c in w.channels()], f"at exit ({budget_text})"
            )
        finally:
            self._exiting_thread = outer
        if outer is None and self._deferred_signal:
            self._die_by(self._deferred_signal)

    @staticmethod
    def _spill_at_exit(workers: list[Worker], spooled_before: dict[int, int]) -> None:
        """What the drain could not send goes to the spool, where there is one (failing
        lanes spilled during the drain already): say how much, and where.
        """
        for worker in workers:
            worker.spill_remaining()
            written: dict[str, int] = {}
            for channel in worker.channels():
                count = channel.spooled_count() - spooled_before.get(id(channel), 0)
                if count:
                    written[channel.datasource] = written.get(channel.datasource, 0) + count
            if written:
                per = "; ".join(f"{count} for {name!r}" for name, count in written.items())
                _diagnostics.say(
                    f"{sum(written.values())} event(s) not delivered at exit were spooled to "
                    f"{worker.spool_directory()} ({per}): the next process started with this "
                    "spool_dir sends them."
                )

    def known_lanes(self) -> set[tuple[str, str]]:
        """Every (host, data source) a producer of this process sends to."""
        return {(w.host, c.datasource) for w in self.workers() for c in w.channels()}

    def _begin_exit(self, workers: list[Worker]) -> float:
        with self._lock:
            if self._exit_deadline is None:
                budget = max((w.exit_timeout for w in workers), default=0.0)
                self._exit_deadline = time.monotonic() + budget
            return self._exit_deadline

    def cap_at_exit(self, timeout: float) -> float:
        """``timeout``, bounded by what is left of the exit budget once the process exits.

        The exit begins with the first of: this package's ``atexit`` drain, or a call made
        on the main thread after it finished (``atexit`` hooks registered after the package
        was imported run before its drain: OpenTelemetry's providers pass ~30 s into each
        exporter's ``shutdown`` there).
        """
        if self._exit_deadline is None:
            main = threading.main_thread()
            if threading.current_thread() is not main or main.is_alive():
                return timeout
            self._begin_exit(self.workers())
        remaining = self._exit_deadline - time.monotonic()  # type: ignore[operator]
        return max(0.0, min(timeout, remaining))

    def flush_all(self, timeout: float | None = None) -> bool:
        """Send everything queued now, within ``timeout``, without entering exit (a signal
        that the application handles, an ASGI lifespan shutdown).

        Args:
            timeout: Seconds at most; default the exit budget, the longest ``exit_timeout``
                of the producers (as ``exit`` computes it).

        Returns:
            Whether nothing was left queued or in flight.
        """
        workers = self.workers()
        if timeout is None:
            timeout = max((w.exit_timeout for w in workers), default=0.0)
        self.drain(workers, time.monotonic() + timeout)
        return all(c.empty() for w in workers for c in w.channels())

    def drain(self, workers: Iterable[Worker], deadline: float) -> None:
        """Make every queued event due and wait for the workers until ``deadline``."""
        workers = list(workers)
        for worker in workers:
            worker.hurry()
        for worker in workers:
            worker.drain(deadline)

    # -- fork and multiprocessing --------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """Reset the child's state, in this order: locks, ids, workers and their channels,
        then multiprocessing's hook (its after-fork callbacks run right after this).
        """
        _diagnostics.after_fork_in_child()
        self._reset_locks()
        self.budget.after_fork_in_child()
        _fields.event_ids.reset()
        self.sending_threads.clear()
        self._spools = {}  # new locks and a fresh scan: workers ask again lazily
        self._exit_deadline = None
        self._exiting_thread = None
        self._deferred_signal = self._redelivered = 0
        for worker in self._workers.values():
            worker.after_fork_in_child()
        self.budget.rebalance()
        if self._workers:  # a multiprocessing child bootstraps next: drain at its end
            self._hook_multiprocessing()

    def _hook_multiprocessing(self) -> None:
        """Multiprocessing's children end with ``os._exit``, skipping ``atexit``: drain in a
        finalizer there (registered only when multiprocessing is in use).
        """
        util = sys.modules.get("multiprocessing.util")
        if util is None:
            return
        with self._lock:
            if not self._multiprocessing_hooked:
                # Runs in every child multiprocessing bootstraps after importing us.
                util.register_after_fork(self, lambda _: self._register_finalizer(util))
                self._multiprocessing_hooked = True
            multiprocessing = sys.modules["multiprocessing"]
            in_child = multiprocessing.parent_process() is not None
            # spawn and forkserver children import the main module before bootstrapping
            # (_inheriting), and run no after-fork callbacks: register directly there, and
            # in any child that imports the package after bootstrapping.
            spawning = getattr(multiprocessing.current_process(), "_inheriting", False)
            if (in_child or spawning) and self._finalizer_pid != os.getpid():
                self._register_finalizer(util)

    def _register_finalizer(self, util: object) -> None:
        self._finalizer_pid = os.getpid()
        util.Finalize(None, self.exit, exitpriority=100)  # type: ignore[attr-defined]
        self._drain_on_sigterm()

    def _drain_on_sigterm(self) -> None:
        """Multiprocessing stops its children with SIGTERM (``Pool.terminate()``, which
        ``with Pool() as pool`` calls on exit), whose default action skips every hook: in a
        child that left SIGTERM at its default, drain first, then die by the signal as
        before (same exit status for the parent).
        """
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may install a handler
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, self._on_sigterm_in_child)

    def redeliver_if_inside_offer(self, signum: int) -> bool:
        """For a signal handler that would drain: if the signal interrupted this thread
        inside an offer, holding a channel's lock, deliver it again in 10 ms and return
        True (the handler then returns, the offer completes, and the signal comes back).
        Draining there would wait out the exit budget for that lock, and raising there
        would leave the offer half done. After a second of that, drain anyway.
        """
        if self._redelivered >= _REDELIVER_MAX or not any(
            channel.held_by_this_thread()
            for worker in self.workers()
            for channel in worker.channels()
        ):
            self._redelivered = 0
            return False
        self._redelivered += 1
        pid = os.getpid()

        def again() -> None:
            time.sleep(_REDELIVER_DELAY)
            os.kill(pid, signum)

        try:
            threading.Thread(target=again, name="tinybird-export-signal", daemon=True).start()
        except RuntimeError:  # no thread to be had (shutdown, a pids limit): drain now
            self._redelivered = 0
            return False
        return True

    def _on_sigterm_in_child(self, signum: int, _frame: object) -> None:
        if self.redeliver_if_inside_offer(signum):
            return
        if self._exiting_thread == threading.get_ident():
            # The signal interrupted this thread's own exit drain (a finalizer): let it
            # finish, then die by the signal.
            self._deferred_signal = signum
            return
        self.exit()
        self._die_by(signum)

    @staticmethod
    def _die_by(signum: int) -> None:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def report_undelivered(
    channels: Iterable[Channel], when: str, reason: str = "exit_timeout"
) -> None:
    """Count what is still queued as dropped for ``reason`` and say so in one line, one
    entry per data source and host.
    """
    lost: dict[tuple[str, str], list[int | str]] = {}
    for channel in channels:
        count = channel.abandon(reason)
        if count:
            entry = lost.setdefault((channel.datasource, channel.host), [0, ""])
            entry[0] = int(entry[0]) + count
            entry[1] = channel.last_error() or entry[1]
    if not lost:
        return
    total = sum(int(count) for count, _ in lost.values())
    reasons = "; ".join(
        f"{count} for {datasource!r} ({error or 'the endpoint did not answer in time'})"
        for (datasource, _host), (count, error) in lost.items()
    )
    _diagnostics.say(f"{total} event(s) not delivered {when}: {reasons}")


PROCESS = Process()

atexit.register(PROCESS.exit)
os.register_at_fork(after_in_child=PROCESS._after_fork_in_child)
