"""The one owner of what is process-wide: workers, lanes, the recursion guard, exit, fork.

``PROCESS`` holds the registry of workers (one per host and token, with its runtime
settings resolved once: ``_runtime_settings``), the lanes (one per host and data source),
the threads that are sending (the recursion guard), the memory budget, the exit drain and
its deadline (``_exit_drain``), SIGTERM's paths (``_exit``), and every hook into the
interpreter: one ``atexit`` drain, one fork hook that resets the child's state in a fixed
order, and multiprocessing's finalizer. No other module changes this state; they call its
methods. The public ``flush``, ``shutdown`` and ``install_sigterm_handler`` act on it.

Exit: ``atexit`` runs hooks last-registered-first, and this module registers after
``logging`` was imported, so the drain runs before ``logging.shutdown`` closes handlers.

Fork: no lock of this package is held across ``fork()``: a ``before`` hook registered by
the application (which may log) can then never deadlock on one. The package's own
``before`` hook waits for a sender's first connection to a host, if one is under way (its
resolver and OpenSSL take locks then that a fork would leave held: ``_first_connect``).
The child forgets the parent's queues (the parent sends them), builds new locks, pools and
threads lazily (reusing the parent's TLS context: it never builds one), and redraws its
event-id prefix.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Final

from tinybird_export import _diagnostics, _fields, _reopen_claim
from tinybird_export._budget import MemoryBudget
from tinybird_export._channel import Channel
from tinybird_export._config import TinybirdConfig
from tinybird_export._delivery import Transport
from tinybird_export._exit import Sigterm
from tinybird_export._exit_drain import ExitDrain
from tinybird_export._first_connect import FIRST_CONNECTS
from tinybird_export._flush_round import FlushRound
from tinybird_export._lanes import LaneTable
from tinybird_export._reentry import Entries
from tinybird_export._runtime_settings import RuntimeSettings
from tinybird_export._senders import SendingThreads
from tinybird_export._spool import Spool
from tinybird_export._tally import LossWatch, forget_losses_in_child
from tinybird_export._worker import Shared, Worker

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
    """Process-wide state and its hooks; one instance, ``PROCESS``.

    Args:
        transport: Makes each worker's transport (tests); default the HTTP client.
    """

    def __init__(self, transport: Callable[[RuntimeSettings], Transport] | None = None) -> None:
        self.sending = SendingThreads()
        """Threads sending right now: records they create are dropped by the handler."""
        self.losses = LossWatch()
        """Drops of every producer (closed ones too): what the process-wide flush reports."""
        self.budget = MemoryBudget()
        self.lanes = LaneTable()
        self.entries = Entries(self._inside_offer)
        """Whether this thread is inside a public call (a signal handler waits for its end)."""
        self.sigterm = Sigterm(
            self.exit, self.flush, self._inside_offer, self.entries, self._at_interpreter_exit
        )
        self._exit = ExitDrain(self.workers, self.sigterm.held)
        self._transport = transport
        self._workers: dict[tuple[str, str], Worker] = {}
        self._spools: dict[str, Spool] = {}
        # Re-entrant: a signal handler that logs may run while this thread holds it.
        self._lock = threading.RLock()
        self._multiprocessing_hooked = False
        self._finalizer_pid = 0
        self._shared = Shared(
            lanes=self.lanes,
            guard=self.sending,
            budget=self.budget,
            exit_deadline=self._exit.deadline,
            detach=self.detach,
            known_lanes=self.known_lanes,
            signalled=self.entries.deferring,
        )

    # -- the registry of workers ---------------------------------------------------------

    def attach(self, config: TinybirdConfig, channel: Channel, label: str) -> Worker:
        """The worker of ``config``'s host and token, serving ``channel``; a later
        producer's runtime settings are merged by the one rule (``_runtime_settings``).
        """
        key = (config.host, config.token or "")
        with self._lock:
            worker = self._workers.get(key)
            if worker is None:
                settings = RuntimeSettings.of(config)
                worker = self._workers[key] = Worker(
                    settings,
                    self._shared,
                    transport=self._transport(settings) if self._transport else None,
                    spool=self._spool_for(settings),
                )
            else:
                worker.settings.merge(config, label)
            worker.add(channel)
            self.budget.add(channel)
        if worker.spool is not None:
            # A sender looks at the spool now (its first scan, and a previous process's
            # files for this data source), not at the first event; no disk work here.
            worker.notify(channel)
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

    def close(self, channel: Channel, deadline: float) -> None:
        """``channel``'s producer is closed: it sends until ``deadline``, and what it holds
        no longer counts in the open channels' memory bound.
        """
        channel.close(deadline)
        self.budget.rebalance()

    def workers(self) -> list[Worker]:
        """The workers of this process."""
        with self._lock:
            return list(self._workers.values())

    def known_lanes(self) -> set[tuple[str, str]]:
        """Every (host, data source) a producer of this process sends to."""
        return {(w.host, c.datasource) for w in self.workers() for c in w.channels()}

    def _spool_for(self, settings: RuntimeSettings) -> Spool | None:
        """The process's one ``Spool`` for a directory (it releases dead processes' claims
        when it first scans, so there must be only one per process).
        """
        if not settings.spool_dir:
            return None
        with self._lock:
            spool = self._spools.get(settings.spool_dir)
            if spool is None:
                spool = Spool(settings.spool_dir, settings.spool_max_bytes)
                self._spools[settings.spool_dir] = spool
            return spool

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
        return threading.get_ident() not in self.sending.idents

    # -- flush, and exit -------------------------------------------------------------------

    def exit_deadline(self) -> float | None:
        """When the exit budget runs out, once the process is exiting; else ``None``."""
        return self._exit.deadline()

    def exiting(self) -> bool:
        """Whether the exit drain has begun (no thread may start then)."""
        return self._exit.exiting()

    def flush(self, timeout: float | None = None) -> bool:
        """Every producer's ``flush`` at once, without entering exit: see ``flush``."""
        with self.entries as interrupted:
            # Called from a signal handler or a finalizer that interrupted the package on
            # this thread: waiting could take the whole timeout (a channel's lock held) or
            # forever (a plain lock): not done yet, and the round goes on.
            return False if interrupted else self._flush(timeout)

    def _flush(self, timeout: float | None) -> bool:
        workers = self.workers()
        if timeout is None:
            timeout = max((w.settings.exit_timeout for w in workers), default=0.0)
        deadline = time.monotonic() + self.cap_at_exit(max(timeout, 0.0))
        begun = self.losses.begin()
        rounds = [
            (
                worker,
                FlushRound(worker.channels(), None, worker.spool_backlog(worker.channels())),
            )
            for worker in workers
        ]
        reached = all([worker.wait_until(flush.reached, deadline) for worker, flush in rounds])
        return not self.losses.since(begun, returning=True) and reached

    def spill_queued(self) -> int:
        """What every producer still holds goes to the spool where its worker has one,
        without entering exit (``serverless.flush_after``: the platform freezes the process
        next); the events written.
        """
        with self.entries:
            return sum(worker.spill_queued() for worker in self.workers())

    def undelivered(self) -> int:
        """Events the producers of this process hold, queued or in flight."""
        total = 0
        for worker in self.workers():
            for channel in worker.channels():
                stats = channel.stats()
                total += stats.queued + stats.in_flight
        return total

    def exit(self, budget: float | None = None) -> bool:
        """The exit drain (``_exit_drain``): send what is queued within the exit budget,
        spool or report what could not be sent; whether nothing was left undelivered.
        """
        inside_call = self.entries.inside_call()
        with self.entries as interrupted:
            if not interrupted:
                return self._exit.run(budget)
        # A signal handler or a finalizer interrupted the package on this thread: the drain
        # could wait for what the interrupted frame holds. It runs once that call is over,
        # or, inside an offer (no end to hook), at the process's exit.
        if inside_call:
            self.entries.defer("exit", lambda: self.exit(budget))
        _diagnostics.say_once(
            "exit-interrupted",
            "tinybird_export.shutdown() was called on a thread that was inside the package "
            "(from a signal handler or a finalizer that interrupted it): it returned at once, "
            "dropping nothing; the exit drain runs "
            + ("when the interrupted call returns." if inside_call else "at the process's exit."),
        )
        return False

    def exit_at_interpreter_exit(self) -> None:
        """The ``atexit`` hook: the exit drain, before ``logging.shutdown`` (which then
        closes the handlers, sending what they got after the drain in one batch).
        """
        self._exit.before_logging_shutdown()
        self.exit()

    def send_late(self, worker: Worker, channel: Channel, *, flushed_by_logging: bool) -> None:
        """``channel`` got an event once the process is exiting: see ``ExitDrain.send_late``."""
        with self.entries:  # it sends on this thread: a SIGTERM waits for it (_reentry)
            self._exit.send_late(worker, channel, flushed_by_logging=flushed_by_logging)

    def cap_at_exit(self, timeout: float) -> float:
        """``timeout``, bounded by what is left of the exit budget once the process exits
        (``ExitDrain.cap``).
        """
        return self._exit.cap(timeout)

    def _at_interpreter_exit(self) -> bool:
        return self._exit.at_interpreter_exit()

    def _inside_offer(self) -> bool:
        return any(c.held_by_this_thread() for w in self.workers() for c in w.channels())

    # -- fork and multiprocessing --------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """Reset the child's state, in this order: locks, ids, lanes, workers and their
        channels, then multiprocessing's hook (its after-fork callbacks run right after).
        """
        _diagnostics.after_fork_in_child()
        FIRST_CONNECTS.after_fork_in_child()
        self._lock = threading.RLock()
        self.budget.after_fork_in_child()
        forget_losses_in_child()
        _reopen_claim.after_fork_in_child()
        _fields.event_ids.reset()
        self.sending.after_fork_in_child()
        self.sigterm.after_fork_in_child()
        self.lanes.after_fork_in_child()
        for spool in self._spools.values():
            spool.forget_in_child()  # the parent's descriptors and locks stay the parent's
        self._spools = {}  # new locks, identity and scan
        self._exit.after_fork_in_child()
        for worker in self._workers.values():
            worker.after_fork_in_child(self._spool_for(worker.settings))
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
        self.sigterm.install_in_child()


PROCESS = Process()

atexit.register(PROCESS.exit_at_interpreter_exit)
os.register_at_fork(before=FIRST_CONNECTS.wait, after_in_child=PROCESS._after_fork_in_child)


def flush(timeout: float | None = None) -> bool:
    """Deliver what every producer of this process (handlers, event senders, exporters)
    has emitted so far, within ``timeout``.

    The process-wide ``flush()``: for an integration's shutdown hook (an ASGI lifespan, a
    serverless function's end) or a test. Producers keep working afterwards.

    Args:
        timeout: Seconds to wait at most; default the exit budget (the longest
            ``exit_timeout`` of the producers). At exit, what is left of the exit budget.

    Returns:
        Whether every event emitted since the previous ``flush()`` call returned (or since
        the producers started) was acknowledged in time: False if any of it was dropped
        (each producer's ``stats()`` says why; events ``before_send`` filtered out and
        disabled producers do not count), even before this call, or is still queued; True
        again once a later call finds everything since acknowledged. Producers' own
        ``flush()`` keep their own "since the previous call". From a signal handler (or a
        finalizer) that interrupted the package on the same thread: False at once.
    """
    return PROCESS.flush(timeout)


def shutdown(timeout: float | None = None) -> bool:
    """Run the exit drain now: deliver what is queued within ``timeout``, then spool (with
    ``spool_dir``) or count and report on stderr what could not be delivered.

    For a process that is about to end without running ``atexit`` (a pool child before
    ``os._exit``). Afterwards the process is exiting for the package: events emitted
    later are sent on the emitting thread within what is left of the budget, or counted
    as ``exit_timeout``.

    Args:
        timeout: The exit budget; default the longest ``exit_timeout`` of the producers.
            If the exit drain already began, what is left of its budget applies.

    Called from a signal handler (or a finalizer) that interrupted the package on the same
    thread, it returns ``False`` at once, dropping nothing: the drain then runs when the
    interrupted call returns (after an interrupted enqueue, at the process's exit).

    Returns:
        Whether nothing was left undelivered (spooled or given up).
    """
    return PROCESS.exit(timeout)


def install_sigterm_handler() -> None:
    """Make SIGTERM take the normal exit path, so the exit drain runs within its budget.

    SIGTERM's default action ends the process without running ``atexit`` hooks. After this
    call, SIGTERM raises ``SystemExit(143)`` in the main thread, through the exit drain. If
    another handler was installed before, it owns the stop: what is queued is delivered
    first, within the exit budget (that handler may end the process with ``os._exit``),
    then that handler is called, and the process goes on as it decides (a graceful server
    finishes the requests in flight, then exits normally: ``atexit`` drains). A previous
    ``SIG_IGN`` is respected. Calling it twice installs it once. A SIGTERM that lands while
    the main thread is inside the package acts once it is out.

    Not needed under gunicorn or Celery, which handle SIGTERM themselves and exit normally.
    For uvicorn, see the README.

    Raises:
        RuntimeError: Called from a thread other than the main thread (Python only lets
            the main thread install signal handlers).
    """
    PROCESS.sigterm.install()
