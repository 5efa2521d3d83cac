"""The runtime's integrity: right fields, a supervised worker, one memory budget per process,
fork and exit without deadlocks or double counting, data sources that do not wait on each
other, and honest configuration. Each test reproduces a defect found in review."""

from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import (
    PRELUDE,
    SIGNALLED_INSIDE,
    child_env,
    closed_port_url,
    fail_once,
    run_python,
    terminate_when_ready,
    wait_until,
    worker_threads,
)
from tinybird_export import TinybirdEvents, TinybirdHandler, _retry
from tinybird_export._record_mapper import RecordMapper
from tinybird_export.testing import EventsServer, Reply


class TestCallSiteCache:
    def test_records_from_other_processes_keep_their_own_fields(
        self, server: EventsServer, tmp_path: Path
    ) -> None:
        """spawn children log through QueueHandler into a QueueListener(TinybirdHandler)."""
        result = run_python(
            """
            import logging, logging.handlers, multiprocessing, os
            from tinybird_export import TinybirdHandler

            def child(queue):
                log = logging.getLogger("app")
                log.addHandler(logging.handlers.QueueHandler(queue))
                log.setLevel(logging.INFO)
                log.info("from the child")  # one call site, three processes

            if __name__ == "__main__":
                ctx = multiprocessing.get_context("spawn")
                queue = ctx.Queue()
                handler = TinybirdHandler()
                listener = logging.handlers.QueueListener(queue, handler)
                listener.start()
                procs = [ctx.Process(target=child, args=(queue,)) for _ in range(3)]
                for p in procs: p.start()
                for p in procs: p.join(30)
                listener.stop()
                print(sorted(p.pid for p in procs), handler.flush(10))
        """,
            child_env(server),
            script=tmp_path / "spawned.py",
        )
        assert result.returncode == 0, result.stderr
        pids_text, ok = result.stdout.strip().rsplit(" ", 1)
        assert ok == "True"
        assert sorted(e["process"] for e in server.events()) == eval(pids_text)

    _text = st.text(max_size=8)

    @settings(
        derandomize=True,
        deadline=None,
        max_examples=150,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        records=st.lists(
            st.fixed_dictionaries(
                {
                    "levelname": _text,
                    "name": _text,
                    "module": _text,
                    "funcName": _text,
                    "process": st.integers(0, 2**22),
                    "processName": _text,
                    "thread": st.integers(0, 2**40),
                    "threadName": _text,
                    "msg": _text,
                }
            ),
            min_size=2,
            max_size=4,
        )
    )
    def test_fast_path_matches_dict_path_whatever_varies(
        self, records: list[dict[str, Any]]
    ) -> None:
        """Every LogRecord attribute varied on one call site (same path and line)."""
        mapper = RecordMapper("svc", {"env": "prod"}, "both")
        for values in records:
            record = logging.LogRecord("base", logging.INFO, "/app/views.py", 12, "m", (), None)
            record.__dict__.update(values)
            record.created = 1_700_000_000.25
            line, truncated = mapper.encode(record, 1 << 20)
            expected = mapper(record)
            import orjson

            event = orjson.loads(line)  # type: ignore[arg-type]
            # event_id is drawn per call; everything else must be the record's own.
            event.pop("event_id")
            expected.pop("event_id")
            assert event == expected
            assert not truncated


class TestSupervisedWorker:
    def test_an_iteration_that_raises_is_reported_once_and_the_loop_goes_on(
        self,
        server: EventsServer,
        make_handler: Any,
        logger: logging.Logger,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A bug in the sender's loop is said once; the next batch goes on the interval."""
        fail_once(monkeypatch, _retry, "classify")
        handler = make_handler(flush_interval=0.05)
        logger.addHandler(handler)
        logger.info("lost to the bug")
        assert server.wait_for(lambda: server.request_count >= 1, 10)
        logger.info("after the bug")  # no explicit flush: the interval must still work
        assert server.wait_for(lambda: "after the bug" in str(server.events()), 10)
        err = capsys.readouterr().err
        assert err.count("injected bug") == 1, err
        stats = handler.stats()
        assert stats.dropped_by_reason.get("error") == 1
        assert stats.emitted == stats.sent + stats.dropped + stats.queued + stats.in_flight

    def test_a_bug_in_the_send_is_dropped_as_error_not_retried(
        self,
        server: EventsServer,
        make_handler: Any,
        logger: logging.Logger,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A bug while sending drops that batch as error, never retried."""
        from tinybird_export import _client

        fail_once(monkeypatch, _client, "_gzip")
        handler = make_handler()
        logger.addHandler(handler)
        logger.info("hit by the bug")
        assert handler.flush(5) is False
        logger.info("sent")
        assert handler.flush(5)
        assert [e["event"] for e in server.events()] == ["sent"]
        stats = handler.stats()
        assert stats.dropped_by_reason == {"error": 1}
        assert stats.retries == 0
        assert "injected bug" in capsys.readouterr().err

    @pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
    def test_a_dead_worker_thread_is_restarted_by_the_next_enqueue(
        self,
        server: EventsServer,
        make_handler: Any,
        logger: logging.Logger,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A BaseException that escapes the loop ends the thread; the next enqueue starts
        another, and the batch it held is sent, not lost."""
        original = _retry.classify
        calls: list[int] = []

        def exits_once(status: int | None) -> _retry.Outcome:
            calls.append(1)
            if len(calls) == 1:
                raise SystemExit  # ends a thread quietly
            return original(status)

        monkeypatch.setattr(_retry, "classify", exits_once)
        # The first answer waits until the test has seen the thread: answered at once, the
        # thread could end before it is looked for (a loaded machine did that).
        server.script(Reply(hang=True))
        handler = make_handler(flush_interval=0.05)
        logger.addHandler(handler)
        before = worker_threads()
        logger.info("first")
        assert server.wait_for(lambda: server.arrivals >= 1, 10)
        started = worker_threads() - before  # the thread this handler started, waiting
        assert len(started) == 1
        server.release()
        assert wait_until(lambda: not any(t.is_alive() for t in started))  # it is gone
        logger.info("second")
        assert server.wait_for(lambda: len(server.events()) == 3, 10)
        # The first request's answer was lost with the thread, so its batch went again.
        assert [e["event"] for e in server.events()] == ["first", "first", "second"]
        assert handler.flush(10)
        stats = handler.stats()
        assert (stats.sent, stats.dropped, stats.queued) == (2, 0, 0)


class TestMemoryBudget:
    def test_dictconfig_reloads_during_an_outage_share_one_budget(
        self, server: EventsServer
    ) -> None:
        """Five dictConfig reloads in an outage hold one bound and report in one line."""
        # The closed handlers keep what they hold until exit (their close deadline, their
        # flush_timeout, is far off), so the bound must hold all of it; a closed handler's own
        # deadline is test_a_closed_handlers_queue_is_given_up_at_its_deadline's. With 0.3 s,
        # a loaded machine passed one deadline per reload, each said in a line of its own.
        # The outage is an endpoint that never answers: one that refuses connections has
        # closed handlers given up at once, once it has refused for 0.75 s (on a loaded
        # machine, before the fifth reload).
        server.respond(Reply(hang=True))
        result = run_python(
            """
            import logging, logging.config
            from tinybird_export import TinybirdHandler
            cfg = {"version": 1,
                   "handlers": {"tb": {"class": "tinybird_export.TinybirdHandler",
                                       "queue_max_bytes": 2 * 1024 * 1024,
                                       "batch_max_bytes": 1024 * 1024,
                                       "flush_timeout": 30, "exit_timeout": 0.5}},
                   "root": {"handlers": ["tb"], "level": "INFO"}}
            handlers = []
            for reload in range(5):
                logging.config.dictConfig(cfg)
                handlers.append(logging.getLogger().handlers[0])
                for i in range(4000):
                    logging.info("%s", "x" * 900)
            held = sum(h.stats().queued_bytes for h in handlers)
            print(held)
        """,
            child_env(server),
        )
        server.release()
        assert result.returncode == 0, result.stderr
        assert int(result.stdout) <= 2 * 1024 * 1024
        # What is lost is reported at exit in one line, one entry for the one data source and
        # host, whichever handler held it.
        lines = [line for line in result.stderr.splitlines() if "not delivered" in line]
        assert len(lines) == 1 and "not delivered at exit" in lines[0], result.stderr
        assert lines[0].count("'app_logs'") == 1, lines

    def test_a_closed_handlers_queue_is_given_up_at_its_deadline(
        self, make_handler: Any, logger: logging.Logger
    ) -> None:
        """A closed handler's queue is given up at its close deadline, counted."""
        handler = make_handler(host=closed_port_url(), flush_timeout=0.2)
        logger.addHandler(handler)
        logger.info("x")
        handler.close()
        assert wait_until(lambda: handler.stats().queued == 0)  # given up by the worker
        stats = handler.stats()
        assert stats.dropped_by_reason == {"close_timeout": 1}
        assert stats.queued == stats.in_flight == 0


class TestForkAndExit:
    def test_a_before_fork_hook_that_logs_does_not_deadlock(self, server: EventsServer) -> None:
        """An app's before-fork hook that logs cannot deadlock on a lock of ours."""
        result = run_python(
            """
            import logging, os
            log = logging.getLogger("app"); log.propagate = False; log.setLevel(logging.INFO)
            os.register_at_fork(before=lambda: log.info("about to fork"))
            from tinybird_export import TinybirdHandler
            handler = TinybirdHandler(flush_interval=60)
            log.addHandler(handler)
            log.info("parent")
            pid = os.fork()
            if pid == 0:
                log.info("child")
                os._exit(0 if handler.flush(10) else 3)
            _, status = os.waitpid(pid, 0)
            print(os.waitstatus_to_exitcode(status), handler.flush(10))
        """,
            child_env(server),
            timeout=30,
        )
        assert result.stdout.split() == ["0", "True"], result.stderr
        assert sorted(e["event"] for e in server.events()) == ["about to fork", "child", "parent"]

    @pytest.mark.parametrize("delay", [0.44, 0.47, 0.5, 0.53])
    def test_exit_while_the_last_answer_arrives_counts_each_event_once(
        self, server: EventsServer, delay: float
    ) -> None:
        """The answer comes back right as the exit budget runs out."""
        server.respond(Reply(delay=delay))
        result = run_python(
            """
            import atexit, logging
            # Registered before the package's own exit drain, so it runs after it.
            atexit.register(lambda: print(*[getattr(handler.stats(), name)
                                            for name in ("dropped", "sent", "unknown")]))
            from tinybird_export import TinybirdHandler
            log = logging.getLogger("app"); log.propagate = False; log.setLevel(logging.INFO)
            handler = TinybirdHandler(exit_timeout=0.5, flush_interval=60)
            log.addHandler(handler)
            for i in range(100):
                log.info("n %d", i)
        """,
            child_env(server),
        )
        assert "Traceback" not in result.stderr, result.stderr
        dropped, sent, unknown = map(int, result.stdout.split())
        assert dropped + sent + unknown == 100
        lost = re.search(r"(\d+) event\(s\) not delivered", result.stderr)
        assert (int(lost.group(1)) if lost else 0) == dropped
        unanswered = re.search(r"(\d+) event\(s\) were being sent", result.stderr)
        assert (int(unanswered.group(1)) if unanswered else 0) == unknown

    def test_giving_up_while_the_worker_completes_counts_each_event_once(
        self, server: EventsServer, logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The exit report abandons a channel while its sender handles the answer; with a
        tiny switch interval the two interleave at every bytecode. (The old code's sender
        died with IndexError: pop from an empty deque.)"""
        import random
        import threading

        from tinybird_export._delivery_messages import give_up as report_undelivered

        errors: list[BaseException | None] = []
        monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
        previous = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        rng = random.Random(7)
        try:
            for i in range(150):
                handler = TinybirdHandler(
                    datasource="race",
                    host=server.url,
                    token=server.token,
                    batch_max_rows=5,
                    flush_interval=60,
                )
                logger.addHandler(handler)
                for _ in range(20):
                    logger.info("x %d", i)
                handler.flush(0)
                time.sleep(rng.random() * 0.004)  # lands anywhere in the request
                report_undelivered([handler._producer.channel], "in the test")
                logger.removeHandler(handler)
                handler.close()
                stats = handler.stats()
                assert stats.emitted == 20 == stats.sent + stats.dropped + stats.unknown, stats
        finally:
            sys.setswitchinterval(previous)
        assert errors == []

    def test_sigterm_drains_before_a_previous_handler_that_exits(
        self, server: EventsServer
    ) -> None:
        """SIGTERM drains within the budget before a framework's handler exits."""
        code = (
            PRELUDE
            + """
            import signal
            from tinybird_export import install_sigterm_handler
            signal.signal(signal.SIGTERM, lambda s, f: os._exit(7))  # a framework's hard stop
            install_sigterm_handler()
            log.addHandler(TinybirdHandler(flush_interval=60))
            for i in range(100):
                log.info("n %d", i)
            print("ready", flush=True)
            threading.Event().wait(60)
        """
        )
        returncode, _, err = terminate_when_ready(code, server)
        assert returncode == 7, err
        assert len(server.events()) == 100

    @pytest.mark.parametrize("previous", ["none", "framework"])
    def test_sigterm_inside_an_offer_waits_for_it_then_drains(
        self, server: EventsServer, previous: str
    ) -> None:
        """The signal lands while the main thread holds a channel's lock (1 run in 60 of a
        tight logging loop): draining there waited out the exit budget and dropped the
        queue; raising there left the offer half done."""
        result = run_python(
            PRELUDE
            + f"""
            import signal, time
            from tinybird_export import install_sigterm_handler
            if {previous!r} == "framework":  # a framework's handler that ends the process
                signal.signal(signal.SIGTERM, lambda s, f: sys.exit(143))
            install_sigterm_handler()
            handler = TinybirdHandler(flush_interval=60, exit_timeout=5)
            log.addHandler(handler)
            for i in range(1000):
                log.info("n %d", i)

            """
            + SIGNALLED_INSIDE
            + """

            started = time.monotonic()
            try:
                # The channel directly: no public call runs app code inside an offer.
                handler._producer.channel.offer(SignalledInside(b'{"event":"inside"}'))
                threading.Event().wait(10)  # the re-delivered signal ends the wait
            except SystemExit:
                print(f"{time.monotonic() - started:.2f}", file=sys.stderr, flush=True)
                raise
        """,
            child_env(server),
            timeout=60,
        )
        assert result.returncode == 143, result.stderr
        seconds = float(result.stderr.strip().splitlines()[0])
        assert seconds < 2, result.stderr  # not the 5 s exit budget
        assert "not delivered" not in result.stderr, result.stderr
        assert len(server.events()) == 1001


class TestIndependentDataSources:
    def test_a_hanging_data_source_does_not_hold_up_another(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger
    ) -> None:
        """A data source whose request hangs does not delay another's."""
        server.script(Reply(hang=True))  # the first request: data source A's
        slow = make_handler(datasource="slow_a", timeout=30, flush_interval=0.2)
        fast = make_handler(datasource="fast_b", timeout=30, flush_interval=0.2)
        logger.addHandler(slow)
        logger.info("a")
        assert server.wait_for(lambda: server.arrivals >= 1, 10)
        logger.removeHandler(slow)
        logger.addHandler(fast)
        started = time.monotonic()
        logger.info("b")
        try:
            assert server.wait_for(lambda: len(server.events("fast_b")) == 1, 0.2 + 1.0)
            assert time.monotonic() - started <= 1.2 + 0.5
        finally:
            server.release()
        assert slow.flush(10)


class TestHonestConfiguration:
    def test_events_apply_static_fields(self, server: EventsServer, make_events: Any) -> None:
        """Static fields fill in what an event does not set itself."""
        events = make_events(fields={"environment": "prod"})
        events.send({"event": "page_view", "environment": "mine"})
        events.send({"event": "click"})
        assert events.flush(10)
        assert [e["environment"] for e in server.events()] == ["mine", "prod"]

    @pytest.mark.parametrize(("name", "value"), [("service", "shop"), ("extras", "flat")])
    def test_settings_that_do_not_apply_are_refused(self, name: str, value: str) -> None:
        """A handler-only setting given to TinybirdEvents is refused, saying why."""
        with pytest.raises(TypeError, match=f"{name}.*TinybirdEvents"):
            TinybirdEvents(datasource="x", token="t", **{name: value})

    def test_handler_refuses_the_otel_shape(self) -> None:
        """The otel shape is the exporters' only: the handler refuses it."""
        with pytest.raises(TypeError, match="shape"):
            TinybirdHandler(datasource="x", token="t", shape="otel")  # type: ignore[call-arg]

    def test_unknown_setting_suggests_the_nearest_name(self) -> None:
        """A misspelt setting suggests the nearest name."""
        with pytest.raises(TypeError, match="did you mean 'datasource'"):
            TinybirdHandler(datasorce="x", token="t")  # type: ignore[call-arg]

    @pytest.mark.parametrize(("text", "expected"), [("false", False), ("0", False), ("yes", True)])
    def test_integration_flags_parse_booleans(self, text: str, expected: bool) -> None:
        """The integrations' flags parse true/false, 1/0, yes/no."""
        from tinybird_export._context import env_flag

        assert env_flag("ACCESS_EVENTS", text) is expected

    def test_a_failed_construction_in_dictconfig_leaves_nothing_behind(self) -> None:
        """The app dies of the config error (uncaught), and says only that."""
        result = run_python("""
            import logging.config
            logging.config.dictConfig({"version": 1, "handlers": {"tb": {
                "class": "tinybird_export.TinybirdHandler", "datasource": "x",
                "token": "t", "flush_interval": "soon"}}})
        """)
        assert result.returncode == 1
        assert "setting 'flush_interval' (env TINYBIRD_FLUSH_INTERVAL)" in result.stderr
        assert "AttributeError" not in result.stderr, result.stderr
        assert result.stderr.count("Traceback") == 2  # ours, chained to dictConfig's

    def test_the_quarantine_hint_can_be_followed(
        self,
        server: EventsServer,
        make_handler: Any,
        logger: logging.Logger,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Every stats() expression the quarantine message names evaluates as said."""
        server.respond(Reply(quarantine=1))
        handler = make_handler(datasource="hinted")
        logger.addHandler(handler)
        logger.info("x")
        assert handler.flush(10)
        err = capsys.readouterr().err
        expressions = re.findall(r"stats\(\)[.\[][^ ;,]*[\w\]]", err)
        assert expressions, err
        for expression in expressions:
            assert eval("handler." + expression, {"handler": handler}) == 1
