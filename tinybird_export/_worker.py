"""The background worker: batches channels' lines and sends them, one request at a time.

One worker (one daemon thread, one connection pool) serves every channel that sends to the
same host with the same token and transport settings. It sleeps on an ``Event`` and wakes
when a channel's queue goes from empty to non-empty (arming its ``flush_interval`` timer),
when a batch fills, on ``flush()``, and at exit; it never polls.

A batch that fails with a retryable answer stays at the head of its channel and its data
source is paused (backoff, or the server's ``Retry-After``); other data sources keep
flowing. The same sending code runs on the caller's thread when there is no worker thread
(``background=False``, or a process where threads cannot start), within the caller's
deadline.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Final

from tinybird_export import _diagnostics, _retry
from tinybird_export._channel import Batch, Channel
from tinybird_export._client import Attempt, EventsClient
from tinybird_export._config import TinybirdConfig

THREAD_NAME: Final = "tinybird-export-worker"

# Threads that are sending right now (the worker's, or a caller inside a synchronous
# flush). Records they create (urllib3's debug logs, a warning inside a send) are dropped
# by the handler before it takes any lock: the recursion guard of peers.md §3 row 6.
sending_threads: set[int] = set()


class Worker:
    """Sends the lines of its channels to one Events API host."""

    def __init__(self, config: TinybirdConfig) -> None:
        self.host = config.host
        self.background = config.background
        self._config = config
        self.client = EventsClient(config)
        self.channels: list[Channel] = []  # replaced, never mutated: iteration is safe
        self.exit_deadline: float | None = None
        self._reset_sync()

    def __repr__(self) -> str:
        return f"<Worker {self.host} channels={len(self.channels)}>"

    def _reset_sync(self) -> None:
        self.wake = threading.Event()
        self.progress = threading.Condition(threading.Lock())
        self.send_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.pid = os.getpid()
        self.paused_until: dict[str, float] = {}
        self.draining = False
        self.stopping = False
        self._rotation = 0

    def after_fork_in_child(self) -> None:
        """New locks, pool and (lazily) thread; the parent's queues are forgotten."""
        self._reset_sync()
        self.client = EventsClient(self._config)  # the parent's sockets stay the parent's
        for channel in self.channels:
            channel.after_fork_in_child()

    # -- waking and starting -----------------------------------------------------------

    def notify(self) -> None:
        """Wake the worker, starting its thread on first use (never during exit)."""
        if self.thread is None and self.background and self.exit_deadline is None:
            self._start()
        self.wake.set()

    def _start(self) -> None:
        with self._start_lock:
            if self.thread is not None:
                return
            thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
            try:
                thread.start()
            except RuntimeError:  # "can't create new thread at interpreter shutdown"
                return
            self.thread = thread

    def thread_alive(self) -> bool:
        """Whether a worker thread of this process is running."""
        return self.thread is not None and self.pid == os.getpid() and self.thread.is_alive()

    # -- the loop ----------------------------------------------------------------------

    def _run(self) -> None:
        ident = threading.get_ident()
        sending_threads.add(ident)
        try:
            while not self.stopping:
                self.wake.clear()
                channel, wait_for = self._pick(time.monotonic())
                if channel is not None:
                    with self.send_lock:
                        self._send_head(channel)
                    continue
                self._reap()
                if not self.stopping:
                    self.wake.wait(wait_for)
        finally:
            sending_threads.discard(ident)
            if self.stopping:
                self.client.close()

    def _pick(self, now: float) -> tuple[Channel | None, float | None]:
        """The next channel with a batch ready to send, else how long until one may be."""
        wait_for: float | None = None
        channels = self.channels
        count = len(channels)
        for offset in range(count):
            channel = channels[(self._rotation + offset) % count]
            how = channel.due(now, self.draining)
            if how:
                channel.cut(how)
            if channel.batches:
                ready_at = self.paused_until.get(channel.datasource, 0.0)
                if ready_at <= now:
                    self._rotation = (self._rotation + offset + 1) % count  # fairness
                    return channel, None
            elif channel.pending_count():
                ready_at = channel.pending_since + channel.flush_interval
            else:
                continue
            delay = max(ready_at - now, 0.001)
            wait_for = delay if wait_for is None else min(wait_for, delay)
        return None, wait_for

    def _reap(self) -> None:
        for channel in self.channels:
            if channel.closed and channel.empty():
                detach(self, channel)

    # -- sending -----------------------------------------------------------------------

    def _send_head(self, channel: Channel) -> None:
        """Send the head batch of ``channel`` once (caller holds ``send_lock``)."""
        batch = channel.batches[0]
        channel.in_flight = batch.count
        try:
            attempt = self.client.post(
                channel.datasource,
                batch.body,
                wait=channel.wait,
                read_timeout=self._read_timeout(channel),
            )
        finally:
            channel.in_flight = 0
        if channel.batches and channel.batches[0] is batch:  # not abandoned at exit meanwhile
            self._apply(channel, batch, attempt)
        with self.progress:
            self.progress.notify_all()

    def _read_timeout(self, channel: Channel) -> float:
        timeout = max(self._config.timeout, 60.0) if channel.wait else self._config.timeout
        if self.exit_deadline is not None:
            timeout = min(timeout, self.exit_deadline - time.monotonic())
        return timeout

    def _apply(self, channel: Channel, batch: Batch, attempt: Attempt) -> None:
        retries = int(batch.attempts > 0)
        batch.attempts += 1
        outcome = _retry.classify(attempt.status)
        if outcome is _retry.Outcome.RETRY:
            self._pause(channel.datasource, attempt, batch.attempts)
            channel.note(_describe(self.host, attempt), requests=1, retries=retries)
            return
        channel.batches.popleft()
        if outcome is _retry.Outcome.SENT:
            channel.resolve(
                batch,
                sent=True,
                requests=1,
                retries=retries,
                quarantined=attempt.quarantined_rows,
                wire_bytes_sent=attempt.wire_bytes,
            )
            if attempt.quarantined_rows:
                _diagnostics.say_once(
                    f"quarantine:{channel.datasource}",
                    f"{attempt.quarantined_rows} row(s) sent to {channel.datasource!r} did not "
                    f"fit its schema and went to {channel.datasource}_quarantine; they are not "
                    "retried (stats()['quarantined'] counts them).",
                )
        elif outcome is _retry.Outcome.SPLIT and batch.count > 1:
            first, second = batch.halves()
            channel.batches.appendleft(second)
            channel.batches.appendleft(first)
            channel.note(requests=1, retries=retries)
        else:
            self._drop(channel, batch, attempt, retries)

    def _drop(self, channel: Channel, batch: Batch, attempt: Attempt, retries: int) -> None:
        status = attempt.status or 0
        reason = "too_large" if status == 413 else f"http_{status}"
        error = _describe(self.host, attempt)
        channel.note(error)
        channel.resolve(batch, sent=False, reason=reason, requests=1, retries=retries)
        hint = (
            "a single event exceeds the request cap (lower max_event_bytes)"
            if status == 413
            else _retry.drop_hint(status, channel.datasource, self.host)
        )
        _diagnostics.say_once(
            f"drop:{channel.datasource}:{status}",
            f"{error} for data source {channel.datasource!r}: {hint}. "
            f"Dropped {batch.count} event(s) without retrying; later batches are "
            f"dropped the same way and counted in stats()['dropped_by_reason'][{reason!r}].",
        )

    def _pause(self, datasource: str, attempt: Attempt, attempts: int) -> None:
        delay = None
        if attempt.status in (429, 503):
            delay = _retry.server_delay(attempt.headers)
        if delay is None:
            delay = _retry.backoff(attempts - 1)
        self.paused_until[datasource] = time.monotonic() + delay

    # -- flush and drain ---------------------------------------------------------------

    def wait_until(self, done: Callable[[], bool], deadline: float) -> bool:
        """Have everything sent until ``done()`` or ``deadline``: by the worker thread when
        one runs, else on this thread. Never starts a thread.
        """
        if self.exit_deadline is not None:
            deadline = min(deadline, self.exit_deadline)
        if self.thread_alive():
            self.wake.set()
            with self.progress:
                while not done():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self.progress.wait(remaining)
            return True
        return self._send_here(done, deadline)

    def _send_here(self, done: Callable[[], bool], deadline: float) -> bool:
        ident = threading.get_ident()
        if not self.send_lock.acquire(timeout=max(deadline - time.monotonic(), 0)):
            return done()
        sending_threads.add(ident)
        try:
            while not done():
                now = time.monotonic()
                if now >= deadline:
                    return False
                channel, wait_for = self._pick(now)
                if channel is not None:
                    self._send_head(channel)
                elif wait_for is None:
                    return done()
                else:  # a data source is paused for a retry: an interruptible wait
                    self.wake.wait(min(wait_for, deadline - now))
            return True
        finally:
            sending_threads.discard(ident)
            self.send_lock.release()

    def drain(self, deadline: float) -> None:
        """Send everything queued, including lines queued meanwhile, until ``deadline``."""
        self.draining = True
        self.wait_until(lambda: all(c.empty() for c in self.channels), deadline)


def _describe(host: str, attempt: Attempt) -> str:
    if attempt.status is None:
        return f"{host}: {attempt.error}"
    text = f": {attempt.error}" if attempt.error else ""
    return f"{host} answered {attempt.status}{text}"


# -- the registry of workers -----------------------------------------------------------

_registry_lock = threading.Lock()
workers: dict[tuple[object, ...], Worker] = {}


def _key(config: TinybirdConfig) -> tuple[object, ...]:
    return (
        config.host,
        config.token,
        config.compression,
        config.connect_timeout,
        config.timeout,
        config.ca_bundle,
        config.background,
    )


def attach(config: TinybirdConfig, channel: Channel) -> Worker:
    """The shared worker for ``config``'s host, token and transport, with ``channel`` added."""
    key = _key(config)
    with _registry_lock:
        worker = workers.get(key)
        if worker is None:
            worker = workers[key] = Worker(config)
        worker.channels = [*worker.channels, channel]
    return worker


def detach(worker: Worker, channel: Channel) -> None:
    """Remove ``channel``; the worker stops when its last channel is gone."""
    with _registry_lock:
        worker.channels = [c for c in worker.channels if c is not channel]
        if worker.channels:
            return
        worker.stopping = True
        for key, value in list(workers.items()):
            if value is worker:
                del workers[key]
    worker.wake.set()
    if worker.thread is None:
        worker.client.close()


def _before_fork() -> None:
    _registry_lock.acquire()
    for worker in workers.values():
        for channel in worker.channels:
            channel.lock.acquire()


def _after_fork_in_parent() -> None:
    for worker in workers.values():
        for channel in worker.channels:
            channel.lock.release()
    _registry_lock.release()


def _after_fork_in_child() -> None:
    global _registry_lock  # noqa: PLW0603 - the parent's lock object may be held forever
    _registry_lock = threading.Lock()
    sending_threads.clear()
    for worker in workers.values():
        worker.after_fork_in_child()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)
