"""Signals that land while the package is at work, in real subprocesses: a handler never
waits for what the frame it interrupted holds, and a signal during the exit drain does not
cut it short."""

from __future__ import annotations

import signal
import textwrap
import threading
import time
from pathlib import Path

import pytest
import urllib3

from tests.helpers import (
    PRELUDE,
    SIGNALLED_INSIDE,
    child_env,
    free_port,
    run_python,
    talk_to_python,
)
from tinybird_export.testing import EventsServer, Reply

# A SIGTERM that lands while the main thread's own flush() lists the spool directory (the
# listing holds a plain lock): the child sends it to itself from inside the listing.
SIGTERM_INSIDE_THE_LISTING = """
            import signal
            from tinybird_export import _spool_disk, _spool_listing
            _spool_listing.LISTING_TTL = -1.0  # every flush lists the directory
            real_listdir, fired = _spool_disk.Disk.listdir, []
            def listdir(self, directory):
                if threading.current_thread() is threading.main_thread() and globals().get("landed") and not fired:
                    fired.append(1)
                    print("inside the listing", flush=True)
                    os.kill(os.getpid(), signal.SIGTERM)  # handled before listdir returns
                return real_listdir(self, directory)
            _spool_disk.Disk.listdir = listdir
"""


class TestSignalInsideThePackage:
    def test_sigterm_during_the_apps_flush_drains_after_it(
        self, server: EventsServer, tmp_path: Path
    ) -> None:
        """install_sigterm_handler() after a framework's hard stop: a SIGTERM inside the
        main thread's flush() (listing the spool) ran the drain in the handler, which waited
        forever for the listing's lock. It now runs once that flush() returns."""
        code = (
            PRELUDE
            + SIGTERM_INSIDE_THE_LISTING
            + """
            import tinybird_export
            handler = TinybirdHandler(spool_dir=SPOOL, exit_timeout=5)
            log.addHandler(handler)
            signal.signal(signal.SIGTERM, lambda s, f: os._exit(7))  # a framework's hard stop
            tinybird_export.install_sigterm_handler()
            for i in range(100):
                log.info("n %d", i)
            landed = True
            handler.flush(5)
            threading.Event().wait(30)
        """.replace("SPOOL", repr(str(tmp_path)))
        )
        result = run_python(code, child_env(server), timeout=30)
        assert result.returncode == 7, result.stderr
        assert "inside the listing" in result.stdout
        assert len(server.events()) == 100

    def test_pool_child_sigterm_during_its_flush_drains_after_it(
        self, server: EventsServer, tmp_path: Path
    ) -> None:
        """A multiprocessing child (SIGTERM left at its default: the package drains, then
        dies by it) flushing when SIGTERM lands: the drain waits for that flush() to
        return, then the child dies by the signal, its events delivered."""
        code = (
            PRELUDE
            + SIGTERM_INSIDE_THE_LISTING
            + """
            import multiprocessing
            def work():
                handler = TinybirdHandler(spool_dir=SPOOL, exit_timeout=5)
                log.addHandler(handler)
                for i in range(100):
                    log.info("n %d", i)
                globals()["landed"] = True
                handler.flush(5)
                threading.Event().wait(30)
            if __name__ == "__main__":
                child = multiprocessing.get_context("fork").Process(target=work)
                child.start()
                child.join(30)
                print("exitcode", child.exitcode, flush=True)
                if child.exitcode is None:
                    child.kill()
        """.replace("SPOOL", repr(str(tmp_path)))
        )
        result = run_python(code, child_env(server), timeout=40)
        assert f"exitcode {-signal.SIGTERM}" in result.stdout, result.stdout + result.stderr
        assert "inside the listing" in result.stdout
        assert len(server.events()) == 100


# The exit drain says when it begins (the test's cue for its second signal).
DRAIN_SAYS_WHEN = """
            from tinybird_export import _exit_drain
            real_drain = _exit_drain.drain
            def drain(workers, deadline):
                print("draining", flush=True)
                return real_drain(workers, deadline)
            _exit_drain.drain = drain
"""


class TestSignalDuringTheExitDrain:
    @pytest.mark.parametrize(
        ("install", "signum", "status"),
        [(True, signal.SIGTERM, 143), (False, signal.SIGINT, -signal.SIGINT)],
        ids=["second-sigterm", "second-ctrl-c"],
    )
    def test_a_second_signal_lets_the_drain_spool_then_exits(
        self, server: EventsServer, tmp_path: Path, install: bool, signum: int, status: int
    ) -> None:
        """A second SIGTERM (or Ctrl-C) while the exit drain waits for a hanging endpoint
        raised inside the drain: a traceback, and nothing spooled. It now waits for the
        drain to spool and report, and the process ends as the signals asked."""
        server.respond(Reply(hang=True))
        code = (
            PRELUDE
            + DRAIN_SAYS_WHEN
            + f"""
            import tinybird_export
            log.addHandler(TinybirdHandler(exit_timeout=2, timeout=30, spool_dir={str(tmp_path)!r}))
            if {install}:
                tinybird_export.install_sigterm_handler()
            for i in range(100):
                log.info("n %d", i)
            print("ready", flush=True)
            threading.Event().wait(60)
        """
        )
        with talk_to_python(["-c", textwrap.dedent(code)], child_env(server)) as proc:
            try:
                assert proc.stdout is not None
                assert proc.stdout.readline().strip() == "ready"
                assert server.wait_for(lambda: server.arrivals >= 1, 10)  # a batch hangs
                proc.send_signal(signum)
                assert proc.stdout.readline().strip() == "draining"
                proc.send_signal(signum)
                _, err = proc.communicate(timeout=30)
            finally:
                proc.kill()
                server.release()
        assert proc.returncode == status, err
        assert "were spooled to" in err, err
        # Only the app's own KeyboardInterrupt (the first Ctrl-C), none from the drain.
        assert err.count("Traceback") == (0 if install else 1), err


GUNICORN_APP = """
import logging, os, sys, time
import tinybird_export
log = logging.getLogger("app")
log.addHandler(tinybird_export.TinybirdHandler(flush_interval=60))
log.setLevel(logging.INFO)
tinybird_export.install_sigterm_handler()  # not needed under gunicorn, but harmless

def app(environ, start_response):
    log.info("request started")
    print("in request", flush=True, file=sys.stderr)
    deadline = time.monotonic() + 20
    while not os.path.exists(GO) and time.monotonic() < deadline:
        time.sleep(0.01)  # the test says when: after SIGTERM was handled
    log.info("request finished")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done"]
"""


class TestUnderAGracefulServer:
    def test_gunicorn_finishes_the_request_in_flight_at_sigterm(
        self, server: EventsServer, tmp_path: Path
    ) -> None:
        """install_sigterm_handler() under gunicorn raised SystemExit into the request being
        served after gunicorn's graceful handler returned (HTTP 500). It now calls that
        handler and returns: the request completes, and the worker's exit drains."""
        pytest.importorskip("gunicorn")
        go = tmp_path / "go"
        (tmp_path / "signal_app.py").write_text(GUNICORN_APP.replace("GO", repr(str(go))))
        port = free_port()
        command = ["-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}"]
        command += ["--chdir", str(tmp_path), "--graceful-timeout", "20", "signal_app:app"]
        with talk_to_python(command, child_env(server)) as proc:
            assert proc.stderr is not None
            answers: list[object] = []

            def get() -> None:
                try:
                    answers.append(urllib3.request("GET", f"http://127.0.0.1:{port}/", timeout=30))
                except urllib3.exceptions.HTTPError as exc:
                    answers.append(exc)

            client = threading.Thread(target=get)
            try:
                while "Booting worker" not in proc.stderr.readline():
                    pass  # the master listens once it boots a worker (the pipe ends if it dies)
                client.start()
                while "in request" not in proc.stderr.readline():
                    pass
                proc.send_signal(signal.SIGTERM)  # graceful stop: docker stop, Kubernetes
                # The handler flushes before gunicorn's handler: the request's first line.
                assert server.wait_for(lambda: len(server.events()) >= 1, 10)
                go.touch()
                client.join(30)
                _, err = proc.communicate(timeout=30)
            finally:
                go.touch()
                proc.kill()
                if client.ident is not None:
                    client.join(30)
        assert proc.returncode == 0, err
        answer = answers[0]
        assert isinstance(answer, urllib3.BaseHTTPResponse), answer
        assert (answer.status, answer.data) == (200, b"done")
        events = [e["event"] for e in server.events()]
        assert events == ["request started", "request finished"]


class TestPublicCallsFromTheAppsSignalHandler:
    @pytest.mark.parametrize(
        ("where", "call"),
        [("offer", "shutdown"), ("offer", "flush"), ("listing", "shutdown")],
    )
    def test_they_return_at_once_and_drop_nothing(
        self, server: EventsServer, tmp_path: Path, where: str, call: str
    ) -> None:
        """The app's own SIGTERM handler calls tinybird_export.shutdown() or flush() while
        the signal interrupted the package on the main thread: inside an offer, the call
        waited out the whole budget (the channel's lock is held) and then dropped the
        queue; inside a flush listing the spool, it hung. It now returns False at once,
        and the process's exit (or the end of the interrupted call) delivers it all."""
        code = (
            PRELUDE
            + SIGTERM_INSIDE_THE_LISTING
            + f"""
            import tinybird_export
            handler = TinybirdHandler(flush_interval=60, exit_timeout=3, spool_dir={str(tmp_path)!r})
            log.addHandler(handler)
            def on_sigterm(signum, frame):
                started = time.monotonic()
                result = tinybird_export.{call}()
                print(f"{call}() -> {{result}} in {{time.monotonic() - started:.2f}} s", flush=True)
            signal.signal(signal.SIGTERM, on_sigterm)
            for i in range(1000):
                log.info("n %d", i)

            """
            + SIGNALLED_INSIDE
            + f"""

            if {where!r} == "offer":
                handler._producer.channel.offer(SignalledInside(b'{{"event":"inside"}}'))
            else:
                landed = True
                handler.flush(5)
                log.info("inside")
        """
        )
        result = run_python(code, child_env(server), timeout=40)
        assert result.returncode == 0, result.stderr
        said, seconds = result.stdout.strip().splitlines()[-1].rsplit(" in ", 1)
        assert said == f"{call}() -> False", result.stdout
        assert float(seconds.split()[0]) < 1, result.stdout  # not the 3 s budget
        assert "not delivered" not in result.stderr, result.stderr
        assert len(server.events()) == 1001


class TestSignalDuringALongWait:
    def test_sigterm_during_a_long_flush_ends_its_wait(self, server: EventsServer) -> None:
        """A SIGTERM deferred to the end of the app's flush(45) against a hanging endpoint
        waited for the whole 45 s before the exit began. The deferred signal ends the wait:
        the exit follows within its 1 s budget, and the loss is reported."""
        server.respond(Reply(hang=True))
        code = (
            PRELUDE
            + """
            import tinybird_export
            tinybird_export.install_sigterm_handler()
            handler = TinybirdHandler(exit_timeout=1, timeout=120)
            log.addHandler(handler)
            log.info("held by the server")
            print("ready", flush=True)
            handler.flush(45)
        """
        )
        with talk_to_python(["-c", textwrap.dedent(code)], child_env(server)) as proc:
            try:
                assert proc.stdout is not None
                assert proc.stdout.readline().strip() == "ready"
                assert server.wait_for(lambda: server.arrivals >= 1, 10)  # inside flush()
                started = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                _, err = proc.communicate(timeout=55)
                seconds = time.monotonic() - started
            finally:
                proc.kill()
                server.release()
        assert proc.returncode == 143, err
        assert seconds < 10, err  # not the flush's 45 s
        assert "1 event(s) were being sent at exit" in err, err

    @pytest.mark.parametrize("where", ["atexit", "pool-child"])
    def test_sigterm_as_the_exit_drain_begins_does_not_cut_it(
        self, server: EventsServer, where: str
    ) -> None:
        """A SIGTERM landing as the exit drain begins, before it holds signals (a pool's
        terminate() racing its worker's own exit, under load): deferred, it ended the
        drain's wait at once (100 events given up), or raised SystemExit in atexit."""
        code = (
            PRELUDE
            + """
            import multiprocessing, signal
            import tinybird_export
            from tinybird_export import _exit_drain
            real_begin, fired = _exit_drain.ExitDrain._begin, []
            def begin(self, workers, budget):
                if not fired:
                    fired.append(1)
                    os.kill(os.getpid(), signal.SIGTERM)  # handled before _begin returns
                return real_begin(self, workers, budget)
            def work():
                log.addHandler(TinybirdHandler(flush_interval=60, exit_timeout=5))
                for i in range(100):
                    log.info("n %d", i)
                _exit_drain.ExitDrain._begin = begin
            if __name__ == "__main__":
                if WHERE == "atexit":
                    tinybird_export.install_sigterm_handler()
                    work()
                else:
                    child = multiprocessing.get_context("fork").Process(target=work)
                    child.start()
                    child.join(30)
                    print("exitcode", child.exitcode)
        """.replace("WHERE", repr(where))
        )
        result = run_python(code, child_env(server), timeout=40)
        if where == "atexit":
            assert result.returncode == 0, result.stderr  # exiting already: nothing to stop
        else:
            assert result.stdout.strip() == f"exitcode {-signal.SIGTERM}", result.stderr
        assert result.stderr == ""
        assert len(server.events()) == 100


class TestSignalTheMainThreadMissed:
    @pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
    def test_a_pool_child_blocked_on_a_lock_still_drains_and_dies(
        self, server: EventsServer, tmp_path: Path, method: str
    ) -> None:
        """A pool worker waiting for its task queue's lock, which terminate() then holds for
        good: a SIGTERM whose C-level handler ran while its main thread was not in a system
        call was marked and never acted on, and terminate() joined the worker forever (a CI
        hang of ``with Pool(2)``). Here the C handler runs on another thread (the same
        miss, made certain): the child still drains, then dies by the signal."""
        code = (
            PRELUDE
            + """
            import multiprocessing, signal
            def work(lock):
                log.addHandler(TinybirdHandler(flush_interval=60, exit_timeout=5))
                log.info("from the child")
                other = threading.Thread(target=threading.Event().wait, daemon=True)
                other.start()
                # SIGTERM's C handler runs on `other`: nothing interrupts the main thread.
                threading.Timer(0.3, signal.pthread_kill, (other.ident, signal.SIGTERM)).start()
                lock.acquire()  # held by the parent: returns only if interrupted
            if __name__ == "__main__":
                ctx = multiprocessing.get_context(METHOD)
                lock = ctx.Lock()
                lock.acquire()
                child = ctx.Process(target=work, args=(lock,))
                child.start()
                child.join(15)
                print("exitcode", child.exitcode, flush=True)
                if child.exitcode is None:
                    child.kill()
        """.replace("METHOD", repr(method))
        )
        result = run_python(code, child_env(server), timeout=40, script=tmp_path / "child.py")
        assert f"exitcode {-signal.SIGTERM}" in result.stdout, result.stdout + result.stderr
        assert [e["event"] for e in server.events()] == ["from the child"], result.stderr

    def test_an_apps_own_handler_in_a_fork_child_is_left_to_run_once(
        self, server: EventsServer, tmp_path: Path
    ) -> None:
        """A forked child whose target sets its own graceful SIGTERM handler: it runs once and
        the child finishes its job (the watch of the package's handler re-sent the signal
        every 50 ms, then ended the child after 5 s)."""
        code = (
            PRELUDE
            + """
            import multiprocessing, os, signal, time
            def work(queue):
                calls = []
                signal.signal(signal.SIGTERM, lambda *_: calls.append(time.monotonic()))
                queue.put("ready")
                while not calls:
                    time.sleep(0.01)
                deadline = time.monotonic() + 1.0  # the job's last second after the request
                while time.monotonic() < deadline:
                    time.sleep(0.01)
                queue.put(f"handler ran {len(calls)} time(s)")
            if __name__ == "__main__":
                log.addHandler(TinybirdHandler(flush_interval=60, exit_timeout=1))
                ctx = multiprocessing.get_context("fork")
                queue = ctx.Queue()
                child = ctx.Process(target=work, args=(queue,))
                child.start()
                assert queue.get(timeout=20) == "ready"
                os.kill(child.pid, signal.SIGTERM)
                print(queue.get(timeout=20), flush=True)
                child.join(20)
                print("exitcode", child.exitcode, flush=True)
        """
        )
        result = run_python(code, child_env(server), timeout=60, script=tmp_path / "child.py")
        assert "handler ran 1 time(s)" in result.stdout, result.stdout + result.stderr
        assert "exitcode 0" in result.stdout, result.stdout + result.stderr
