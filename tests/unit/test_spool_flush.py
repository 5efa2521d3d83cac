"""The spool in a producer's flush() and in the exit drain, on the calling thread with a
recording transport: a previous process's files are sent before flush() says True, the exit
sends them too but never waits for a failing data source, and what the spool refuses at
exit is dropped for its reason and said."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from tests.helpers import RecordingTransport, accepted, answered, unit_config, unit_process
from tinybird_export._process import Process
from tinybird_export._producer import Producer
from tinybird_export._spool import SUFFIX, Spool
from tinybird_export._spool_disk import Disk

HOST = "http://127.0.0.1:9"


def producer(process: Process, spool_dir: Path, **settings: object) -> Producer:
    """A producer of ``process`` with a spool (no threads: flush and exit send here)."""
    return Producer(unit_config(spool_dir=str(spool_dir), **settings), "unit", process=process)


def left_by_a_previous_process(spool_dir: Path, count: int) -> None:
    """``count`` one-event files for app_logs, written by a process that is gone."""
    previous = Spool(str(spool_dir), 1 << 20)
    for i in range(count):
        previous.write(b'{"old":%d}\n' % i, 1, HOST, "app_logs", (previous.identity, 1))


def files(spool_dir: Path) -> list[str]:
    """Batch files on disk."""
    return [p.name for p in spool_dir.iterdir() if SUFFIX in p.name]


def test_flush_is_true_only_once_the_previous_processs_files_are_delivered(
    tmp_path: Path,
) -> None:
    """A restart that logs nothing: flush() sends the spool; False while it cannot."""
    left_by_a_previous_process(tmp_path, 3)
    transport = RecordingTransport(answered(503), default=accepted())
    p = producer(unit_process(transport), tmp_path)
    assert p.flush(0.2) is False  # the endpoint refused: the files wait
    assert p.flush(2) is True
    assert len(transport.posts) == 2  # the same three files, again, together
    assert transport.posts[-1].body.splitlines() == [b'{"old":%d}' % i for i in range(3)]
    assert files(tmp_path) == [] and p.stats().unspooled == 3


def test_the_exit_drain_sends_the_spool_and_never_waits_for_a_failing_data_source(
    tmp_path: Path,
) -> None:
    """Healthy: the previous process's files are sent at exit. Failing: one attempt, and
    the exit ends at once, leaving them for the next process."""
    left_by_a_previous_process(tmp_path / "healthy", 2)
    transport = RecordingTransport()
    process = unit_process(transport)
    producer(process, tmp_path / "healthy")
    assert process.exit(5) is True
    assert len(transport.lines()) == 2 and files(tmp_path / "healthy") == []

    left_by_a_previous_process(tmp_path / "failing", 2)
    failing = RecordingTransport(default=answered(503))
    process = unit_process(failing)
    producer(process, tmp_path / "failing")
    process.exit(300)  # would take five minutes if it waited for the files
    assert len(failing.posts) == 1 and len(files(tmp_path / "failing")) == 2


@pytest.mark.parametrize(
    ("code", "reason"), [(errno.ENOSPC, "spool_full"), (errno.EROFS, "spool_error")]
)
def test_what_the_spool_refuses_at_exit_is_dropped_for_its_reason_and_said(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    code: int,
    reason: str,
) -> None:
    """The endpoint fails and the disk refuses the exit's spill: counted, and one line says
    what, where and why."""
    transport = RecordingTransport(default=answered(503))
    process = unit_process(transport)
    p = producer(process, tmp_path)

    def refuse(self: Disk, operation: str, path: object) -> None:
        if operation == "create" and ".tmp-" in str(path):
            raise OSError(code, os.strerror(code))

    monkeypatch.setattr(Disk, "check", refuse)
    for i in range(5):
        p.put({"n": i})
    assert process.exit(0.5) is False
    stats = p.stats()
    assert stats.dropped_by_reason == {reason: 5} and stats.accounted()
    err = capsys.readouterr().err
    assert f"5 event(s) for 'app_logs' could not be spooled at exit to {tmp_path}" in err
    assert f"counted as {reason!r}" in err and os.strerror(code) in err


def test_a_flush_after_this_producers_spill_waits_for_the_events_queued_since(
    tmp_path: Path,
) -> None:
    """Events this producer spilled, then events queued after them: flush() sends the
    spooled file first and is True only once the new events are delivered too (the
    spooled file's events never meet the new events' mark)."""
    transport = RecordingTransport()
    process = unit_process(transport)
    p = producer(process, tmp_path, flush_interval=60)
    for i in range(3):
        p.put({"old": i})
    assert process.spill_queued() == 3  # a serverless function frozen with them queued
    for i in range(3):
        p.put({"new": i})
    assert p.flush(5) is True
    assert transport.lines() == [b'{"old":%d}' % i for i in range(3)] + [
        b'{"new":%d}' % i for i in range(3)
    ]
    stats = p.stats()
    assert (stats.sent, stats.queued, stats.spooled) == (6, 0, 0), stats


def test_a_reopened_handlers_earlier_spooled_events_move_to_sent(tmp_path: Path) -> None:
    """A handler's events spooled, then the handler closed (its worker stops) and reopened:
    when the files are sent, its stats move them from spooled to sent (they were left
    spooled forever: the file was put down to the new opening's channel as not its own)."""
    transport = RecordingTransport()
    process = unit_process(transport)
    handler = Producer(
        unit_config(spool_dir=str(tmp_path)), "unit", flushed_by_logging=True, process=process
    )
    for i in range(3):
        handler.put({"spooled": i})
    assert process.spill_queued() == 3
    handler.close(0)
    assert process.workers() == []  # its last channel detached: the worker stopped
    handler.put({"event": "reopens"})
    started = time.monotonic()
    assert handler.flush(5) is True
    assert len(transport.lines()) == 4 and files(tmp_path) == []
    # Sent for the open channel, not within the closed writer's deadline (long past).
    assert all(post.deadline is not None and post.deadline > started for post in transport.posts)
    stats = handler.stats()
    assert (stats.emitted, stats.sent, stats.spooled, stats.unspooled) == (4, 4, 0, 3)
    assert stats.accounted()
