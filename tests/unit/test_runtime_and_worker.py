"""Runtime settings resolved once per host and token, and the worker behind them, built
with a recording transport: one worker per host and token, the rule for conflicting
settings, flush and shutdown for every producer, and detaching what is closed."""

from __future__ import annotations

import pytest

from tests.helpers import (
    RecordingTransport,
    accepted,
    answered,
    unit_config,
    unit_process,
)
from tinybird_export._config import TinybirdConfig
from tinybird_export._process import Process
from tinybird_export._producer import Producer
from tinybird_export._runtime_settings import RuntimeSettings


def producer(process: Process, **settings: object) -> Producer:
    """A producer of ``process`` (no threads: flush and exit send on this thread)."""
    return Producer(unit_config(**settings), "unit", process=process)


def test_runtime_settings_come_from_the_first_producer() -> None:
    """host, token, timeouts, compression, ca_bundle, background, adaptive, spool, exit
    budget: the runtime's; the rest (data source, limits, wait...) is the producer's."""
    config = unit_config(timeout=7, compression="none", adaptive=False, exit_timeout=2)
    settings = RuntimeSettings.of(config)
    assert (settings.timeout, settings.compression, settings.adaptive) == (7, "none", False)
    assert (settings.exit_timeout, settings.token, settings.background) == (2, "unit-token", False)
    assert "unit-token" not in repr(settings)
    assert not hasattr(settings, "datasource") and not hasattr(settings, "flush_interval")


def test_the_longest_exit_budget_and_timeouts_hold(capsys: pytest.CaptureFixture[str]) -> None:
    """exit_timeout, connect_timeout and timeout: the longest asked for holds, whichever
    producer came first; each conflict is said once on stderr."""
    settings = RuntimeSettings.of(unit_config(exit_timeout=1, timeout=30))
    settings.merge(unit_config(exit_timeout=3, timeout=5, connect_timeout=1), "second")
    settings.merge(unit_config(exit_timeout=2), "third")
    assert (settings.exit_timeout, settings.timeout, settings.connect_timeout) == (3, 30, 3)
    said = sorted(capsys.readouterr().err.splitlines())  # one line per setting
    assert len(said) == 3
    assert "asked for connect_timeout=1.0" in said[0] and "connect_timeout=3.0 holds" in said[0]
    assert "asked for exit_timeout=3.0" in said[1] and "exit_timeout=3.0 holds" in said[1]
    assert "asked for timeout=5.0" in said[2] and " timeout=30.0 holds" in said[2]


def test_other_runtime_settings_keep_the_first_producers_value(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """compression, ca_bundle, background, adaptive, the spool: the first producer's."""
    settings = RuntimeSettings.of(unit_config(compression="gzip", adaptive=True))
    settings.merge(unit_config(compression="none", adaptive=False), "second")
    assert (settings.compression, settings.adaptive) == ("gzip", True)
    err = capsys.readouterr().err
    assert "compression='gzip' holds" in err and "the first producer's" in err


def test_the_same_settings_say_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    """Producers that agree share their worker silently."""
    settings = RuntimeSettings.of(unit_config())
    settings.merge(unit_config(datasource="other", flush_interval=5), "second")
    assert capsys.readouterr().err == ""


def test_one_worker_per_host_and_token() -> None:
    """Producers of one host and token share one worker (one transport), whatever their
    data sources and runtime settings; another token gets its own."""
    made: list[RecordingTransport] = []

    def transport(settings: RuntimeSettings) -> RecordingTransport:
        made.append(RecordingTransport())
        return made[-1]

    process = Process(transport=transport)
    a = producer(process, datasource="a")
    b = producer(process, datasource="b", timeout=20, compression="none")
    c = producer(process, datasource="a", token="another-token")
    assert len(made) == 2 and len(process.workers()) == 2
    assert a.worker is b.worker is not c.worker
    assert process.known_lanes() == {("http://127.0.0.1:9", "a"), ("http://127.0.0.1:9", "b")}


def test_flush_sends_on_the_calling_thread_without_background() -> None:
    """background=False: nothing is sent between calls; flush() sends, in order."""
    transport = RecordingTransport()
    p = producer(unit_process(transport))
    for i in range(3):
        p.put({"n": i})
    assert transport.posts == []
    assert p.flush(1)
    assert transport.lines() == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    assert p.stats().sent == 3


def test_the_process_flush_covers_every_producer_and_says_if_anything_was_lost() -> None:
    """tinybird_export.flush(): every producer's events, on every worker; False if any
    of them was dropped instead of acknowledged."""
    transport = RecordingTransport(accepted(), answered(403))
    process = unit_process(transport)
    a, b = producer(process, datasource="a"), producer(process, datasource="b", token="t2")
    a.put({"n": 1})
    b.put({"n": 2})
    assert process.flush(1) is False  # b's event was refused (403)
    assert [post.datasource for post in transport.posts] == ["a", "b"]
    a.put({"n": 3})
    assert process.flush(1) is True


def test_shutdown_is_the_exit_drain_now() -> None:
    """shutdown(): what can be sent is sent within the budget, the rest is given up,
    counted as exit_timeout and said; events emitted afterwards are sent right away or
    counted."""
    transport = RecordingTransport(answered(503), default=accepted())
    process = unit_process(transport)
    p = producer(process)
    p.put({"n": 1})
    assert process.exit(0) is False  # a budget of 0: no time to retry
    assert p.stats().dropped_by_reason == {"exit_timeout": 1}
    assert process.exiting()
    p.put({"n": 2})  # after the drain: sent on this thread, within what is left (nothing)
    stats = p.stats()
    assert stats.accounted() and stats.sent + stats.dropped == 2


def test_the_exit_budget_is_the_longest_of_the_producers() -> None:
    """Two producers asking for 1 s and 3 s: the worker's exit budget is 3 s."""
    process = unit_process(RecordingTransport())
    producer(process, exit_timeout=1)
    producer(process, datasource="other", exit_timeout=3)
    (worker,) = process.workers()
    assert worker.settings.exit_timeout == 3


def test_a_closed_producer_is_detached_and_its_worker_stops() -> None:
    """close() flushes and detaches; the last producer's close stops the worker, which
    closes its transport."""
    transport = RecordingTransport()
    process = unit_process(transport)
    first, second = producer(process, datasource="a"), producer(process, datasource="b")
    first.put({"n": 1})
    first.close(1)
    assert transport.lines() == [b'{"n":1}'] and not transport.closed
    assert len(process.workers()) == 1
    second.close(1)
    assert process.workers() == [] and transport.closed


def test_stats_show_the_lanes_pacing() -> None:
    """send_interval is flush_interval, or the rate limit's spacing when longer."""
    transport = RecordingTransport(answered(429, {"retry-after": "0.5"}))
    p = producer(unit_process(transport), flush_interval=0.25)
    p.put({"n": 1})
    assert p.flush(0.05) is False  # one attempt, then paused past the timeout
    assert p.stats().send_interval == 0.25  # 429: the spacing is one interval
    assert p.stats().last_error.endswith("status 429")


def test_a_config_resolved_from_the_environment_is_not_read_in_unit_tests() -> None:
    """unit_config ignores the developer's TINYBIRD_* variables (environ={})."""
    assert unit_config().host == "http://127.0.0.1:9"
    assert isinstance(unit_config(), TinybirdConfig)
