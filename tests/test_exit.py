"""Exit, fork and SIGTERM, in real subprocesses against the real test server."""

from __future__ import annotations

import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers import (
    PRELUDE,
    child_env,
    closed_port_url,
    run_python,
    talk_to_python,
    terminate_when_ready,
)
from tinybird_export.testing import EventsServer, Reply


class TestExit:
    def test_10000_records_logged_right_before_exit_all_arrive(self, server: EventsServer) -> None:
        """10,000 records logged just before exit all arrive, quietly, in few requests."""
        result = run_python(
            PRELUDE
            + """
            log.addHandler(TinybirdHandler(flush_interval=60))
            for i in range(10_000):
                log.info("n %d", i)
        """,
            child_env(server),
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert [e["event"] for e in server.events()] == [f"n {i}" for i in range(10_000)]
        assert len(server.requests) <= 5

    def test_hanging_endpoint_exit_is_bounded_and_reported(self, server: EventsServer) -> None:
        """A hanging endpoint costs the exit budget and no more, and the loss is said."""
        server.respond(Reply(hang=True))
        started = time.monotonic()
        result = run_python(
            PRELUDE
            + """
            log.addHandler(TinybirdHandler(exit_timeout=1, timeout=30))
            for i in range(100):
                log.info("n %d", i)
        """,
            child_env(server),
        )
        elapsed = time.monotonic() - started
        assert result.returncode == 0
        assert elapsed < 15  # budget 1 s plus interpreter start-up, generously
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        # The server holds the request: sent, no answer in time, not "not delivered".
        assert "100 event(s) were being sent at exit" in lines[0]
        assert "exit budget 1 s" in lines[0] and "may have stored them" in lines[0]
        server.release()

    def test_a_batch_in_flight_at_the_deadline_is_unknown_not_lost(
        self, server: EventsServer
    ) -> None:
        """6,000 records, the first batch's answer slower than the exit budget: that batch
        (stored by the server afterwards) is said and counted as sent without an answer
        (unknown), the two never sent as not delivered (it counted all 6,000 as
        exit_timeout)."""
        server.script(Reply(delay=2.5))
        result = run_python(
            """
            import atexit, logging
            atexit.register(lambda: print(handler.stats().unknown,
                                          dict(handler.stats().dropped_by_reason)))
            from tinybird_export import TinybirdHandler
            log = logging.getLogger("app"); log.propagate = False; log.setLevel(logging.INFO)
            handler = TinybirdHandler(exit_timeout=1, timeout=30, flush_interval=60,
                                      batch_max_rows=2000)
            log.addHandler(handler)
            for i in range(6000):
                log.info("n %d", i)
        """,
            child_env(server),
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split(maxsplit=1) == ["2000", "{'exit_timeout': 4000}\n"]
        (line,) = result.stderr.splitlines()
        assert "4000 event(s) not delivered at exit (exit budget 1 s)" in line, line
        assert "2000 event(s) were being sent and got no answer in time" in line, line
        assert server.wait_for_rows(2000, 10)  # the server stored the unknown ones
        assert [e["event"] for e in server.events()] == [f"n {i}" for i in range(2000)]

    @pytest.mark.parametrize("budgets", [(1, 3), (3, 1)], ids=["1 then 3", "3 then 1"])
    def test_the_exit_budget_is_the_longest_of_the_producers(
        self, server: EventsServer, budgets: tuple[int, int]
    ) -> None:
        """Two handlers of one host and token asking for 1 s and 3 s, a hanging endpoint:
        the process spends the 3 s budget (it spent 1.2 s), and says which holds."""
        server.respond(Reply(hang=True))
        result = run_python(
            f"""
            import atexit, logging, time
            ended = []
            # Registered before the package's exit drain, so it runs after it.
            atexit.register(lambda: print(f"{{time.monotonic() - ended[0]:.2f}}"))
            from tinybird_export import TinybirdHandler
            log = logging.getLogger("app"); log.propagate = False; log.setLevel(logging.INFO)
            for name, budget in zip("ab", {budgets!r}):
                log.addHandler(TinybirdHandler(datasource=name, exit_timeout=budget, timeout=30))
            log.info("stuck")
            ended.append(time.monotonic())
        """,
            child_env(server),
        )
        server.release()
        assert result.returncode == 0, result.stderr
        drained = float(result.stdout)
        assert 2.9 <= drained < 3 + 5, result.stderr  # the 3 s budget, with room for load
        assert "exit budget 3 s" in result.stderr
        said = [line for line in result.stderr.splitlines() if "share one worker" in line]
        assert len(said) == 1 and "exit_timeout=3.0 holds" in said[0], result.stderr

    def test_refused_endpoint_exit_is_bounded_and_reported(self) -> None:
        """A refusing endpoint costs at most the budget, and the loss says why."""
        url = closed_port_url()
        started = time.monotonic()
        result = run_python(
            PRELUDE
            + """
            log.addHandler(TinybirdHandler(exit_timeout=1))
            log.info("lost")
        """,
            {"TINYBIRD_HOST": url, "TINYBIRD_TOKEN": "t", "TINYBIRD_DATASOURCE": "app_logs"},
        )
        assert time.monotonic() - started < 15
        assert "1 event(s) not delivered at exit" in result.stderr
        assert "Connection refused" in result.stderr

    @pytest.mark.parametrize("spool", [False, True])
    def test_a_data_source_paused_past_the_budget_is_not_waited_for(
        self, server: EventsServer, tmp_path: Path, spool: bool
    ) -> None:
        """Answered 429 with Retry-After: 60, nothing can be sent before the deadline: a
        flush and the exit waited out their whole budget (5 s) for nothing. They give up
        at once, as when nothing listens: spooled with a spool, else reported with why."""
        server.respond(Reply(status=429, headers={"Retry-After": "60"}))
        spool_dir = repr(str(tmp_path)) if spool else None
        code = (
            PRELUDE
            + f"""
            handler = TinybirdHandler(exit_timeout=5, flush_timeout=5, spool_dir={spool_dir})
            log.addHandler(handler)
            log.info("a")
            assert not handler.flush(5)  # sent, answered 429: paused for 60 s
            log.info("b")
            started = time.monotonic()
            flushed = handler.flush(5)
            print(f"{{flushed}} {{time.monotonic() - started:.2f}}", flush=True)
            input()
        """
        )
        with talk_to_python(["-c", textwrap.dedent(code)], child_env(server)) as proc:
            try:
                assert proc.stdout is not None and proc.stdin is not None
                flushed, seconds = proc.stdout.readline().split()
                started = time.monotonic()
                proc.stdin.write("\n")
                proc.stdin.flush()
                _, err = proc.communicate(timeout=30)
                exit_seconds = time.monotonic() - started
            finally:
                proc.kill()
        assert proc.returncode == 0, err
        assert flushed == "False" and float(seconds) < 1, (flushed, seconds)
        assert exit_seconds < 2.5, err  # not the 5 s budget
        assert server.arrivals == 1, err  # nothing was sent after the 429
        if spool:
            assert "2 event(s) not delivered at exit were spooled" in err, err
        else:
            assert "2 event(s) not delivered at exit" in err, err
            assert "the server asked to wait past it for app_logs" in err, err

    def test_records_logged_by_later_atexit_hooks_are_sent(self, server: EventsServer) -> None:
        """A record from an atexit hook that runs after the drain still arrives."""
        result = run_python(
            """
            import atexit, logging
            atexit.register(lambda: logging.getLogger("app").warning("from atexit"))
            from tinybird_export import TinybirdHandler
            log = logging.getLogger("app"); log.propagate = False
            log.addHandler(TinybirdHandler(flush_interval=60))
            log.warning("before exit")
        """,
            child_env(server),
        )
        assert result.returncode == 0, result.stderr
        assert sorted(e["event"] for e in server.events()) == ["before exit", "from atexit"]


class TestDeadlocks:
    def test_dictconfig_while_worker_is_mid_request(self, server: EventsServer) -> None:
        """Reconfiguring holds logging's lock: close() must not wait on the worker."""
        server.respond(Reply(hang=True))
        result = run_python(
            PRELUDE
            + """
            import logging.config
            cfg = {"version": 1, "disable_existing_loggers": False,
                   "handlers": {"tb": {"class": "tinybird_export.TinybirdHandler",
                                       "timeout": 30, "flush_timeout": 30}},
                   "root": {"handlers": ["tb"], "level": "DEBUG"}}
            logging.config.dictConfig(cfg)
            logging.getLogger("urllib3").setLevel(logging.DEBUG)
            logging.info("first")
            logging.getLogger().handlers[0].flush(0.2)  # the worker is now inside the request
            started = time.monotonic()
            logging.config.dictConfig(cfg)
            logging.getLogger().handlers[0].close()
            logging.getLogger().handlers[0].close()
            logging.shutdown()
            print(round(time.monotonic() - started, 2))
        """,
            child_env(server, TINYBIRD_EXIT_TIMEOUT="0.5"),
        )
        assert result.returncode == 0, result.stderr
        assert float(result.stdout.strip()) < 2

    def test_root_at_debug_with_urllib3_debug_and_failing_endpoint(
        self, server: EventsServer
    ) -> None:
        """No recursion, no loop, no deadlock; urllib3's records from the send are dropped."""
        server.script(*[Reply(status=503)] * 3)
        result = run_python(
            PRELUDE
            + """
            root = logging.getLogger()
            root.setLevel(logging.DEBUG)
            handler = TinybirdHandler()
            root.addHandler(handler)
            logging.getLogger("urllib3").setLevel(logging.DEBUG)
            logging.debug("app record")
            ok = handler.flush(30)
            print(ok, handler.stats().emitted, handler.stats().retries)
        """,
            child_env(server),
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["True", "1", "3"]
        assert [e["logger"] for e in server.events()] == ["root"]


class TestFork:
    def test_child_sends_its_own_and_not_the_parents(self, server: EventsServer) -> None:
        """A forked child sends its own records, never the parent's queue."""
        result = run_python(
            PRELUDE
            + """
            handler = TinybirdHandler(flush_interval=60)
            log.addHandler(handler)
            log.info("parent before fork")
            pid = os.fork()
            if pid == 0:
                log.info("child")
                ok = handler.flush(10)
                os._exit(0 if ok else 3)
            _, status = os.waitpid(pid, 0)
            log.info("parent after fork")
            print(os.waitstatus_to_exitcode(status), handler.flush(10))
        """,
            child_env(server),
        )
        assert result.stdout.split() == ["0", "True"], result.stderr
        events = server.events()
        assert sorted(e["event"] for e in events) == [
            "child",
            "parent after fork",
            "parent before fork",
        ]
        assert len({e["event_id"] for e in events}) == 3
        assert len({e["process"] for e in events}) == 2

    def test_fork_while_another_thread_is_inside_emit(self, server: EventsServer) -> None:
        """The other thread is parked inside emit (in before_send) when fork() runs."""
        result = run_python(
            PRELUDE
            + """
            inside, resume = threading.Event(), threading.Event()
            def hook(event):
                if event["event"] == "blocked" and threading.current_thread().name == "other":
                    inside.set(); resume.wait()
                return event
            handler = TinybirdHandler(before_send=hook, flush_interval=60)
            log.addHandler(handler)
            other = threading.Thread(target=lambda: log.info("blocked"), name="other")
            other.start()
            inside.wait(10)
            pid = os.fork()
            if pid == 0:
                log.info("child")
                os._exit(0 if handler.flush(10) else 3)
            resume.set(); other.join()
            _, status = os.waitpid(pid, 0)
            print(os.waitstatus_to_exitcode(status), handler.flush(10))
        """,
            child_env(server),
        )
        assert result.stdout.split() == ["0", "True"], result.stderr
        assert sorted(e["event"] for e in server.events()) == ["blocked", "child"]

    def test_fork_while_worker_is_mid_send(self, server: EventsServer) -> None:
        """The parent's request hangs at the server while the child forks and sends."""
        server.script(Reply(hang=True))
        code = (
            PRELUDE
            + """
            handler = TinybirdHandler(flush_interval=60, timeout=30)
            log.addHandler(handler)
            log.info("parent")
            handler.flush(0)  # wake the worker; the server holds its request
            sys.stdin.readline()  # the test says when the request has arrived
            pid = os.fork()
            if pid == 0:
                log.info("child")
                os._exit(0 if handler.flush(10) else 3)
            _, status = os.waitpid(pid, 0)
            print(os.waitstatus_to_exitcode(status), flush=True)
            sys.stdin.readline()
            print(handler.flush(10), flush=True)
        """
        )
        with talk_to_python(["-c", textwrap.dedent(code)], child_env(server)) as proc:
            self._drive_mid_send_fork(server, proc)
        assert sorted(e["event"] for e in server.events()) == ["child", "parent"]

    @staticmethod
    def _drive_mid_send_fork(server: EventsServer, proc: subprocess.Popen[str]) -> None:
        try:
            assert server.wait_for(lambda: server.arrivals >= 1, 20)
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "0"
            assert [e["event"] for e in server.events()] == ["child"]
            server.release()
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "True"
        finally:
            proc.kill()

    def test_multiprocessing_fork_child_delivers_at_its_exit(self, server: EventsServer) -> None:
        """multiprocessing children end with os._exit; their events still go out."""
        result = run_python(
            PRELUDE
            + """
            import multiprocessing
            log.addHandler(TinybirdHandler(flush_interval=60))
            def work(n):
                for i in range(n):
                    log.info("worker %d", i)
            if __name__ == "__main__":
                log.info("parent")
                ctx = multiprocessing.get_context("fork")
                procs = [ctx.Process(target=work, args=(50,)) for _ in range(2)]
                for p in procs: p.start()
                for p in procs: p.join(30)
                print([p.exitcode for p in procs])
        """,
            child_env(server),
        )
        assert result.stdout.strip() == "[0, 0]", result.stderr
        events = [e["event"] for e in server.events()]
        assert events.count("parent") == 1
        assert sorted(e for e in events if e != "parent") == sorted(
            [f"worker {i}" for i in range(50)] * 2
        )


class TestSigterm:
    @pytest.mark.parametrize("chain", [False, True])
    def test_sigterm_takes_the_exit_path(self, server: EventsServer, chain: bool) -> None:
        """With install_sigterm_handler, SIGTERM drains and exits with 143; after a previous
        handler (a graceful server's), it delivers, calls that handler and lets it decide:
        here it ends the main loop, and the normal exit drains."""
        code = (
            PRELUDE
            + """
            import signal
            from tinybird_export import install_sigterm_handler
            stop = threading.Event()
            def graceful(signum, frame):
                print("previous handler", flush=True)
                stop.set()
            if CHAIN:
                signal.signal(signal.SIGTERM, graceful)
            install_sigterm_handler()
            install_sigterm_handler()
            log.addHandler(TinybirdHandler(flush_interval=60))
            for i in range(100):
                log.info("n %d", i)
            print("ready", flush=True)
            stop.wait(60)
            log.info("after the previous handler")
        """.replace("CHAIN", str(chain))
        )
        returncode, out, err = terminate_when_ready(code, server)
        assert returncode == (0 if chain else 143), err
        assert ("previous handler" in out) is chain
        assert len(server.events()) == (101 if chain else 100)

    def test_install_from_a_thread_is_refused(self) -> None:
        """install_sigterm_handler() from another thread than main says why it cannot."""
        result = run_python("""
            import threading
            from tinybird_export import install_sigterm_handler
            errors = []
            def run():
                try:
                    install_sigterm_handler()
                except RuntimeError as exc:
                    errors.append(str(exc))
            t = threading.Thread(target=run); t.start(); t.join()
            print(errors[0])
        """)
        assert "main thread" in result.stdout
