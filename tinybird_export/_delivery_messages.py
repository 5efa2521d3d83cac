"""What delivery says on stderr, apart from the outcome table that decides when to say it.

Each message says what happened, what was counted, and what to fix, once per kind
(``_diagnostics.say_once``): a failing host (again only after it recovered), a drop, one bad
line, quarantined rows, an internal error; and, at exit or a closed producer's deadline, one
line for everything given up, with queued events (dropped) told apart from a request under
way (of unknown fate). ``describe`` is an answer as text, for messages and ``last_error``.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable, Iterable

from tinybird_export import _diagnostics, _retry
from tinybird_export._channel import Channel
from tinybird_export._client import Attempt

_UNKNOWN_NOTE = (
    "the server may have stored them or not: counted as unknown in stats(), not as "
    "dropped; event_id tells duplicates apart"
)


def describe(host: str, answer: Attempt) -> str:
    """An answer as text for messages and ``last_error``."""
    if answer.status is None:
        return f"{host}: {answer.error}"
    text = f": {answer.error}" if answer.error else ""
    return f"{host} answered {answer.status}{text}"


class Failures:
    """A host's failures: the first of a kind said at once, then not again until the host
    answers (``recovered``) and fails anew.

    Args:
        host: The API host.
        exit_deadline: When the exit budget runs out, once exiting (the exit report says
            what could not be delivered, and why: nothing is said meanwhile).
        spooling: Whether events are kept on disk too.
    """

    def __init__(
        self, host: str, exit_deadline: Callable[[], float | None], *, spooling: bool
    ) -> None:
        self._host = host
        self._exit_deadline = exit_deadline
        self._spooling = spooling
        self._since: float | None = None

    def failing(self, datasource: str, answer: Attempt) -> None:
        """An answer that is retried (a transport failure, 429, 5xx...)."""
        if self._exit_deadline() is not None:
            return
        kind = answer.kind if answer.status is None else f"http_{answer.status}"
        where = "" if answer.status is None else f":{datasource}"
        if self._since is None:
            self._since = time.monotonic()
        kept = "up to the memory bound" + (", then in the spool" if self._spooling else "")
        _diagnostics.say_once(
            f"failing:{self._host}:{kind}{where}",
            f"{describe(self._host, answer)}: "
            f"{_retry.failure_hint(answer.status, answer.kind, self._host)}. Events are kept "
            f"({kept}) and retried; this is said again only after a recovery.",
        )

    def recovered(self) -> None:
        """The host acknowledged a request: said if it was failing, with for how long."""
        since = self._since
        if since is None:
            return
        self._since = None
        if _diagnostics.forget(f"failing:{self._host}:"):
            _diagnostics.say(
                f"{self._host} answers again: delivering, after "
                f"{time.monotonic() - since:.0f} s of failures."
            )


def say_dropped(datasource: str, host: str, answer: Attempt, reason: str, what: str) -> None:
    """``what`` ("3 event(s) from the spool") was dropped for ``answer``, counted as
    ``reason``; what to fix.
    """
    status = answer.status or 0
    hint = (
        "a single event exceeds the request cap (lower max_event_bytes)"
        if status == 413
        else _retry.drop_hint(status, datasource, host)
    )
    _diagnostics.say_once(
        f"drop:{datasource}:{status}",
        f"{describe(host, answer)} for data source {datasource!r}: {hint}. Dropped {what} "
        "without retrying; later batches are dropped the same way and counted in "
        f"stats().dropped_by_reason[{reason!r}].",
    )


def say_bad_line(datasource: str, error: str, how: str) -> None:
    """One event of a batch was refused (``error``) and dropped alone; the rest was sent."""
    _diagnostics.say_once(
        f"bad-line:{datasource}",
        f"{error} for data source {datasource!r}: the server refused one event of a "
        f"batch ({how}); that event alone was dropped, counted in "
        "stats().dropped_by_reason['http_400'], and the others were sent again. Later "
        "ones are counted without this message.",
    )


def say_quarantined(datasource: str, rows: int) -> None:
    """The server put ``rows`` rows of an acknowledged request in quarantine."""
    _diagnostics.say_once(
        f"quarantine:{datasource}",
        f"{rows} row(s) sent to {datasource!r} did not fit its schema and went to "
        f"{datasource}_quarantine; they are not retried (stats().quarantined counts them).",
    )


def report_internal_error(
    exc: BaseException, lost: str, redact: Callable[[str], str] = str
) -> None:
    """Say once per kind of error where it happened, and what to do; the loop goes on."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    dropped = f"; {lost} dropped, counted as 'error'" if lost else ""
    if isinstance(exc, RecursionError) and "gevent" in sys.modules:
        # gevent's ssl patching applied after ssl was imported (gunicorn --preload with
        # gevent workers) recurses in SSLContext: gevent's docs say patch first.
        advice = (
            " gevent monkey-patched ssl after it was imported: call "
            "gevent.monkey.patch_all() before anything else is imported (first line of "
            "gunicorn.conf.py, or drop --preload)."
        )
    else:
        advice = " Sending goes on; please report this."
    _diagnostics.say_once(
        f"internal:{type(exc).__name__}{where}",
        redact(f"internal error in the sender ({type(exc).__name__}: {exc}{where}){dropped}.")
        + advice,
    )


def give_up(
    channels: Iterable[Channel],
    when: str,
    reason: str = "exit_timeout",
    first: str = "the exit budget ran out before they could be sent",
) -> int:
    """Abandon what ``channels`` still hold and say so in one line, one entry per data
    source; how many events.

    What is queued was not sent: dropped for ``reason``, with the channel's last failure,
    or ``first`` (why it was not sent: "the exit budget ran out first"). A batch in flight
    was sent and its answer had not come: of unknown fate, said apart (the server may
    have stored it).
    """
    by_datasource: dict[str, tuple[int, int, str]] = {}
    for channel in channels:
        gone = channel.abandon(reason)
        if gone.total:
            dropped, unknown, error = by_datasource.get(channel.datasource, (0, 0, ""))
            error = channel.last_error() or error if gone.dropped else error
            by_datasource[channel.datasource] = (
                dropped + gone.dropped,
                unknown + gone.unknown,
                error,
            )
    dropped = sum(d for d, _, _ in by_datasource.values())
    unknown = sum(u for _, u, _ in by_datasource.values())
    if not dropped and not unknown:
        return 0
    entries = []
    for name, (not_sent, unanswered, error) in by_datasource.items():
        if not unanswered:
            entries.append(f"{not_sent} for {name!r} ({error or first})")
        elif not not_sent:
            entries.append(f"{unanswered} for {name!r} ({_UNKNOWN_NOTE})")
        else:
            entries.append(
                f"{not_sent} for {name!r} ({error or first}) and {unanswered} sent unanswered "
                f"({_UNKNOWN_NOTE})"
            )
    if not unknown:
        head = f"{dropped} event(s) not delivered {when}"
    elif not dropped:
        head = f"{unknown} event(s) were being sent {when} and got no answer in time"
    else:
        head = (
            f"{dropped} event(s) not delivered {when}, and {unknown} event(s) were being sent "
            "and got no answer in time"
        )
    _diagnostics.say(f"{head}: {'; '.join(entries)}")
    return dropped + unknown


def give_up_at_close_deadline(channel: Channel, host: str, refused: float | None) -> int:
    """A closed producer's deadline passed (or nothing listens at ``host``, ``refused``
    for that long): what its channel still holds is given up, counted as
    ``close_timeout``, and said.
    """
    return give_up(
        [channel],
        "when a closed producer's deadline passed",
        "close_timeout",
        "the close deadline passed before they could be sent"
        if refused is None
        else f"nothing accepts connections at {host} (refused for {refused:.1f} s), "
        "so its close deadline was not waited out",
    )
