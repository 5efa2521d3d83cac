"""One attempt, and the one table of what its answer means, for either kind of source.

What a sender sends is a *source*: a batch of a channel's memory (``MemorySource``) or a
file of the disk spool (``SpoolSource``). Both answer the same four outcomes of
``_retry.classify``, so there is one table (``Delivery._apply``):

- sent: the source is acknowledged (the batch leaves memory; the file is removed);
- retry: the lane pauses (the server's ``Retry-After``, else backoff on the source's own
  attempts) and the source stays first in line (the batch at the head of its queue, the
  file claimed in its lane's slot);
- split (413): the batch is replaced by its halves; the file's halves are written in its
  place by the spill bridge; a single event is dropped as ``too_large``;
- drop: counted as ``http_<status>`` and said once with what to fix.

What each outcome says on stderr is ``_delivery_messages``'s.

An unexpected exception during an attempt is a bug, not a transport error: the source is
dropped as ``error`` and the bug reported once (``report_internal_error``). The transport
is injected (``Transport``): the HTTP client in production, a recording one in tests.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from tinybird_export import _bad_line, _retry
from tinybird_export._bad_line import Act
from tinybird_export._batch import Batch
from tinybird_export._channel import Channel
from tinybird_export._client import Attempt
from tinybird_export._delivery_messages import (
    Failures,
    describe,
    report_internal_error,
    say_bad_line,
    say_dropped,
    say_quarantined,
)
from tinybird_export._lanes import Lane
from tinybird_export._spool import Spool, SpooledBatch


class Transport(Protocol):
    """What sends one request: ``_client.EventsClient``, or a test's recording transport."""

    def post(
        self,
        datasource: str,
        ndjson: bytes | bytearray,
        *,
        wait: bool,
        read_timeout: float,
        deadline: float | None = None,
        gzipped: bytes | None = None,
        connect_timeout: float | None = None,
    ) -> Attempt:
        """One request; network failures are answers (``status=None``), not exceptions."""
        ...

    def redact(self, text: str) -> str:
        """``text`` without the token."""
        ...

    def close(self) -> None:
        """Release its connections."""
        ...


class Source(Protocol):
    """What one attempt sends, and how each outcome resolves it."""

    channel: Channel  # its producer's: wait, close deadline, counters
    count: int
    origin: str  # for messages: "" or " from the spool"

    @property
    def batch_in_memory(self) -> Batch | None:
        """A memory batch: a 400 for one bad line of it drops that line alone."""
        ...

    @property
    def attempts(self) -> int:
        """Requests made for it so far (its backoff)."""
        ...

    def payload(self) -> tuple[bytes | bytearray, bytes | None]:
        """The NDJSON body, or ``(b"", gzipped body)``."""
        ...

    def sent(self, quarantined: int, wire_bytes: int) -> None:
        """Acknowledged."""
        ...

    def retry(self, error: str, *, maybe_stored: bool = False) -> None:
        """Failed retryably: stays first in its lane (``maybe_stored``: sent whole, no
        answer).
        """
        ...

    def split(self, *, requested: bool = True) -> bool:
        """413: replaced by its halves; False if it holds one event."""
        ...

    def drop(self, reason: str, error: str, *, requested: bool) -> None:
        """Given up for ``reason`` (after a request when ``requested``)."""
        ...

    def release(self) -> None:
        """Not resolved: its sender stopped (a ``BaseException``); sent again later."""
        ...


class MemorySource:
    """A batch of a channel's memory, in flight."""

    origin = ""

    def __init__(self, channel: Channel, batch: Batch) -> None:
        self.channel = channel
        self.batch = self.batch_in_memory = batch
        self.count = batch.count

    @property
    def attempts(self) -> int:
        return self.batch.attempts

    def payload(self) -> tuple[bytes | bytearray, bytes | None]:
        return self.batch.body, None

    def sent(self, quarantined: int, wire_bytes: int) -> None:
        self.channel.sent(self.batch, quarantined=quarantined, wire_bytes=wire_bytes)

    def retry(self, error: str, *, maybe_stored: bool = False) -> None:
        self.channel.retry(self.batch, error, maybe_stored=maybe_stored)

    def split(self, *, requested: bool = True) -> bool:
        if self.count < 2:
            return False
        self.channel.split(self.batch, requested=requested)
        return True

    def drop(self, reason: str, error: str, *, requested: bool) -> None:
        self.channel.dropped(self.batch, reason, error, requested=requested)

    def release(self) -> None:
        self.channel.unclaim(self.batch)


class SpoolSource:
    """Claimed spool files sent as one request: one file, or several small consecutive
    ones of a lane (their lines in order). They stay claimed, first in their lane, until
    resolved. Each file is accounted to the channel that wrote it (``writers``), or, if
    another process did, to a channel of the lane (unspooled only) with a receipt left for
    its writer. Resolving never raises: the spool handles its own disk errors.

    Args:
        spool: The spool they were claimed from.
        batches: The claimed files, oldest first.
        writers: Each file's channel: its writer, or another channel of its lane.
        resolved: Called once they are acknowledged or dropped (the bridge frees the slot).
        sender: The channel of the lane they are sent for (its deadline, its errors);
            default the first writer (a writer no longer in its lane, closed maybe, only
            counts).
    """

    origin = " from the spool"
    batch_in_memory: Batch | None = None  # a 400 drops a spool file whole

    def __init__(
        self,
        spool: Spool,
        batches: list[SpooledBatch],
        writers: list[Channel],
        resolved: Callable[[SpoolSource], None],
        sender: Channel | None = None,
    ) -> None:
        self.spool = spool
        self.batches = batches
        self.writers = writers
        self.channel = writers[0] if sender is None else sender
        self.count = sum(batch.count for batch in batches)
        self.body = spool.combine(batches)  # here, in the bridge: not on the send path
        self.split_requested = False  # the bridge writes its halves (or sends them apart)
        self._attempts = 0
        self._resolved = resolved

    @property
    def batch(self) -> SpooledBatch:
        """Its first (oldest) file."""
        return self.batches[0]

    @property
    def own(self) -> bool:
        """Whether this process's channel wrote its first file."""
        return self.spool.owns(self.batches[0], self.writers[0].serial)

    @property
    def attempts(self) -> int:
        return self._attempts

    def payload(self) -> tuple[bytes | bytearray, bytes | None]:
        return b"", self.body

    def sent(self, quarantined: int, wire_bytes: int) -> None:
        self.spool.failpoint("acked")  # killed after the answer, before the file is removed
        self._resolve("sent", quarantined)

    def retry(self, error: str, *, maybe_stored: bool = False) -> None:
        self._attempts += 1
        self.channel.note_error(error)

    def split(self, *, requested: bool = True) -> bool:
        self.split_requested = self.count > 1
        return self.split_requested

    def drop(self, reason: str, error: str, *, requested: bool) -> None:
        if error:
            self.channel.note_error(error)
        self._resolve(reason, 0)

    def _resolve(self, outcome: str, quarantined: int) -> None:
        sent = outcome == "sent"
        for batch, channel in zip(self.batches, self.writers, strict=True):
            self.spool.done(batch)
            own = self.spool.owns(batch, channel.serial)
            reason = "" if sent else outcome
            channel.unspooled(
                batch.count, own=own, sent=sent, reason=reason, quarantined=quarantined
            )
            if not own:
                self.spool.note_outcome(batch, outcome, quarantined)
            quarantined = 0  # the answer's count, once: to the first file's channel
        self._resolved(self)

    def release(self) -> None:
        """Stays claimed in its lane's slot: sent again next."""


class Delivery:
    """One worker's attempts and what their answers mean, and the transport they go by.

    Args:
        host: The API host.
        transport: What sends.
        timeouts: ``(connect_timeout, timeout)`` now (the longest of the producers').
        exit_deadline: When the exit budget runs out, once exiting.
        spooling: Whether events are kept on disk too (for the failure message).
        rebuild: Makes a new transport in a forked child, given the parent's TLS context
            (the worker's own HTTP client); ``None``: an injected transport is kept.
    """

    def __init__(
        self,
        host: str,
        transport: Transport,
        timeouts: Callable[[], tuple[float, float]],
        exit_deadline: Callable[[], float | None],
        *,
        spooling: bool,
        rebuild: Callable[[ssl.SSLContext | None], Transport] | None = None,
    ) -> None:
        self.host = host
        self.transport = transport
        self._rebuild = rebuild
        self._timeouts = timeouts
        self._exit_deadline = exit_deadline
        self._failures = Failures(host, exit_deadline, spooling=spooling)
        self.refusals = _retry.Refusals()
        """Whether nothing listens at the host (a wait stops for it: ``Worker``)."""

    def after_fork_in_child(self) -> None:
        """A new pool for the child; the parent's TLS context (a child never builds one)."""
        if self._rebuild is not None:
            self.transport = self._rebuild(getattr(self.transport, "tls_context", None))

    def close(self) -> None:
        """Release the current transport's connections (a forked child's are its own)."""
        self.transport.close()

    def wait_begins(self, lanes: Iterable[Lane]) -> Callable[[], bool]:
        """At the start of a wait: the lanes whose connection was refused may try again at
        once (a refused connection costs the host nothing: nothing listens), so that the
        wait learns now whether the host is back. Whether to stop waiting: nothing has
        listened at the host long enough, the last refusal after the wait began.
        """
        began = time.monotonic()
        if self.refusals.lasting() is not None:
            for lane in lanes:
                if lane.refused:
                    lane.paused_until = 0.0
        return lambda: self.refusals.lasting(began) is not None

    def attempt(self, lane: Lane, source: Source, deadline: float | None) -> None:
        """Send ``source`` once, on this thread, and resolve it by the answer.

        ``deadline`` (a synchronous flush's) caps the attempt's own, with the exit budget
        and a closed channel's deadline. A ``BaseException`` leaves it unresolved.
        """
        channel = source.channel
        resolved = False
        try:
            batch = source.batch_in_memory
            if batch is not None and batch.probe is not None and self._known(lane, source, batch):
                resolved = True  # its search for a bad line already knows its fate
                return
            connect_timeout, timeout = self._timeouts()
            # wait=true answers can take ~25 s (events-api docs): 60 s for those.
            timeout = max(timeout, 60.0) if channel.wait else timeout
            now = time.monotonic()
            limits = (deadline, self._exit_deadline(), channel.close_deadline)
            cap = min([now + connect_timeout + timeout, *(d for d in limits if d is not None)])
            lane.pacing.started(now)
            ndjson, gzipped = source.payload()
            answer = self.transport.post(
                lane.datasource,
                ndjson,
                wait=channel.wait,
                read_timeout=timeout,
                deadline=cap,
                gzipped=gzipped,
                connect_timeout=connect_timeout,
            )
            lane.pacing.answered(answer.status, answer.headers, time.monotonic())
            self.refusals.note(answer.status, answer.kind, now)
            lane.refused = answer.status is None and answer.kind == "refused"
            self._apply(lane, source, answer)
            resolved = True
        except Exception as exc:  # noqa: BLE001 - a bug is not a transport error: drop it
            source.drop("error", self.transport.redact(f"internal error: {exc!r}"), requested=False)
            resolved = True
            what = f"{source.count} event(s){source.origin} for {lane.datasource!r}"
            report_internal_error(exc, what, self.transport.redact)
        finally:
            if not resolved:
                source.release()

    def _apply(self, lane: Lane, source: Source, answer: Attempt) -> None:
        """The outcome table (see the module docstring)."""
        outcome = _retry.classify(answer.status)
        if outcome is _retry.Outcome.RETRY:
            pause = _retry.delay(answer.status, answer.headers, source.attempts)
            lane.paused_until = time.monotonic() + pause
            lane.failing = True
            source.retry(describe(self.host, answer), maybe_stored=answer.unanswered)
            self._failures.failing(lane.datasource, answer)
            return
        lane.failing = False
        batch = source.batch_in_memory
        if outcome is _retry.Outcome.SENT:
            self._failures.recovered()
            lane.search_400 = True
            if batch is not None and batch.probe is not None:
                batch.probe.confirmed = True  # its search's 400 is about lines
            source.sent(answer.quarantined_rows, answer.wire_bytes)
            if answer.quarantined_rows:
                say_quarantined(lane.datasource, answer.quarantined_rows)
        elif answer.status == 400 and batch is not None:
            if not self._bad_line(lane, source, batch, answer):
                self._drop(lane.datasource, source, answer)
        elif outcome is not _retry.Outcome.SPLIT or not source.split():
            self._drop(lane.datasource, source, answer)

    def _bad_line(self, lane: Lane, source: Source, batch: Batch, answer: Attempt) -> bool:
        """A 400 for a memory batch: the named line dropped alone, or a step of the search
        for it (``_bad_line``); False if the batch is to be dropped whole.
        """
        act, line = _bad_line.after_400(batch, answer.error, search_allowed=lane.search_400)
        error = describe(self.host, answer)
        if act is Act.DROP:
            probe = batch.probe
            if probe is not None and probe.aborted:
                lane.search_400 = False  # the 400 is about the request: no more searches
            elif probe is not None and probe.confirmed:  # the search found the bad line
                source.drop("http_400", error, requested=True)
                say_bad_line(lane.datasource, error, "found by halving the batch")
                return True
            return False
        if act is Act.DROP_LINE and line is not None:
            source.channel.drop_line(batch, line, "http_400", error)
            say_bad_line(lane.datasource, error, "named by the server")
        elif act is Act.SPLIT:
            source.split()
        else:
            source.channel.park(batch, error)
        return True

    def _known(self, lane: Lane, source: Source, batch: Batch) -> bool:
        """Resolve without a request a piece whose search knows its fate: dropped (the
        search found the 400 is about the request, or this one event is the bad line), or
        halved (refused, and the other half was accepted). False: send it.
        """
        act = _bad_line.before_sending(batch)
        if act is Act.SPLIT:
            return source.split(requested=False)
        if act is Act.DROP and batch.probe is not None:
            source.drop("http_400", batch.probe.error, requested=False)
            if not batch.probe.aborted:
                say_bad_line(lane.datasource, batch.probe.error, "found by halving")
            return True
        return False

    def _drop(self, datasource: str, source: Source, answer: Attempt) -> None:
        reason = "too_large" if answer.status == 413 else f"http_{answer.status or 0}"
        source.drop(reason, describe(self.host, answer), requested=True)
        what = f"{source.count} event(s){source.origin}"
        say_dropped(datasource, self.host, answer, reason, what)
