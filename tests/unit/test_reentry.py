"""The process's record of which thread is inside the package, and the work a signal
handler defers to the end of the outermost call (``_reentry.Entries``)."""

from __future__ import annotations

import pytest

from tinybird_export._reentry import Entries


def test_deferred_work_runs_once_at_the_end_of_the_outermost_call() -> None:
    """Work deferred twice under one key, inside two nested calls, runs once, at the end of
    the outer one."""
    entries = Entries(lambda: False)
    ran: list[str] = []
    with entries as interrupted:
        assert not interrupted
        with entries as nested:
            assert nested
            entries.defer("sigterm", lambda: ran.append("drain"))
            entries.defer("sigterm", lambda: ran.append("drain again"))
        assert ran == []
    assert ran == ["drain"]


def test_a_deferred_action_that_raises_leaves_the_next_signal_acting() -> None:
    """A deferred action that raises (a signal's SystemExit) propagates, and a signal of the
    same key deferred later still runs: its key is not left registered by the actions
    that never ran."""
    entries = Entries(lambda: False)
    ran: list[str] = []

    def exit_now() -> None:
        raise SystemExit(143)

    def interrupted_call() -> None:
        with entries:
            entries.defer("sigint", exit_now)
            entries.defer("sigterm", lambda: ran.append("never"))

    with pytest.raises(SystemExit):
        interrupted_call()
    with entries:
        entries.defer("sigterm", lambda: ran.append("drain"))
    assert ran == ["drain"]


def test_a_call_left_counted_by_a_keyboardinterrupt_is_over_once_its_frame_is() -> None:
    """A Ctrl-C raised as a call's exit began (before its count) left the call counted: once
    its frame is gone the thread is outside again, so later calls are not taken as
    interrupting it (every flush() returned False at once, SIGTERM was deferred for ever)."""
    entries = Entries(lambda: False)

    def interrupted_at_its_exit() -> None:
        entries.__enter__()  # its __exit__ never ran its first line

    interrupted_at_its_exit()
    assert not entries.inside_call()
    with entries as interrupted:
        assert not interrupted
        assert entries.inside_call()
    assert not entries.inside_call()
