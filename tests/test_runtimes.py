"""The ways Python apps are started and stopped in production, each in real subprocesses:
multiprocessing pools with every start method, forks at awkward moments, signal handlers
that log, OpenTelemetry's batch processors at exit, a QueueListener's own records, and
events sent after the exit drain."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import child_env, run_python, talk_to_python
from tinybird_export.testing import EventsServer, Reply

POOL_WORKER = """
import logging, multiprocessing, sys
from concurrent.futures import ProcessPoolExecutor
from tinybird_export import TinybirdHandler
log = logging.getLogger("app"); log.propagate = False; log.setLevel(logging.INFO)
log.addHandler(TinybirdHandler(flush_interval=60))

def work(i):
    log.info("task %d", i)
    return i

if __name__ == "__main__":
    method, how, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ctx = multiprocessing.get_context(method)
    if how == "with-pool":  # the stdlib docs' idiom: __exit__ terminates the workers
        with ctx.Pool(2) as pool:
            assert pool.map(work, range(count)) == list(range(count))
    elif how == "close-join":
        pool = ctx.Pool(2)
        pool.map(work, range(count))
        pool.close(); pool.join()
    elif how == "process":
        procs = [ctx.Process(target=work, args=(i,)) for i in range(count)]
        for p in procs: p.start()
        for p in procs: p.join(30)
        assert [p.exitcode for p in procs] == [0] * count
    elif how == "executor":
        with ProcessPoolExecutor(2, mp_context=ctx) as executor:
            assert list(executor.map(work, range(count), chunksize=50)) == list(range(count))
    print("done", flush=True)
"""


class TestMultiprocessing:
    @pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
    @pytest.mark.parametrize(
        ("how", "count"),
        [("with-pool", 100), ("close-join", 100), ("process", 10), ("executor", 2000)],
    )
    def test_every_task_record_arrives(
        self, server: EventsServer, tmp_path: Path, method: str, how: str, count: int
    ) -> None:
        """Every multiprocessing start method and ending: every record arrives."""
        script = tmp_path / "pool_app.py"
        script.write_text(POOL_WORKER)
        result = subprocess.run(
            [sys.executable, str(script), method, how, str(count)],
            env={**os.environ, **child_env(server)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.stdout.strip() == "done", result.stderr
        events = sorted(e["event"] for e in server.events())
        assert events == sorted(f"task {i}" for i in range(count)), result.stderr[-2000:]


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[EventsServer, Path]]:
    """An https test server with a trustme certificate, and its CA bundle."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    with EventsServer(tls=context) as server:
        yield server, bundle


class TestForkTiming:
    @pytest.mark.timeout(240)
    @pytest.mark.parametrize("how", ["os.fork", "multiprocessing"])
    def test_children_forked_while_the_first_https_request_is_in_openssl_send(
        self, tls_server: tuple[EventsServer, Path], how: str
    ) -> None:
        """Children forked (os.fork, multiprocessing's fork) while the parent's sender is
        inside OpenSSL for the process's first https request, 8 per process, 8 processes:
        every child delivers (one process in three lost all its children's events: their
        sender hung in SSLContext.__new__, or in the handshake's first algorithm fetch)."""
        server, bundle = tls_server
        env = {**child_env(server), "TINYBIRD_CA_BUNDLE": str(bundle), "FORK_WITH": how}
        forked = 0
        for _ in range(8):  # each a fresh process: OpenSSL's first use
            result = run_python(FORK_DURING_FIRST_TLS, env)
            assert result.returncode == 0, result.stderr
            assert int(result.stdout) >= 1, result.stderr  # forked inside OpenSSL
            forked += int(result.stdout)
        events = server.events("forked")
        children = [e for e in events if e["event"].startswith("child")]
        assert len(children) == forked, (forked, len(children))
        assert sum(e["event"] == "parent" for e in events) == 8

    def test_nothing_is_left_to_import_on_the_sender_thread(self) -> None:
        """A fork while the sender imports a module leaves the child's import lock held
        forever (73 of 100 children hung on encodings.idna): whatever a first request
        imports lazily is imported when the package is."""
        result = run_python("""
            import sys
            import tinybird_export
            print(sorted(m for m in ("encodings.idna", "stringprep", "unicodedata")
                         if m not in sys.modules))
        """)
        assert result.stdout.strip() == "[]", result.stderr

    def test_children_forked_during_the_first_https_request_do_not_hang(self) -> None:
        """Children forked during the first HTTPS request send and exit."""
        result = run_python(
            """
            import logging, os, socket, sys, time
            from tinybird_export import TinybirdHandler
            listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen(50)
            host = f"https://localhost:{listener.getsockname()[1]}"
            hung = 0
            for i in range(20):
                handler = TinybirdHandler(datasource="x", token="t", host=host,
                                          exit_timeout=0, flush_timeout=0)
                log = logging.getLogger(f"a{i}"); log.propagate = False
                log.addHandler(handler); log.warning("x"); handler.flush(0)
                pid = os.fork()  # the sender is starting its first request now
                if pid == 0:
                    "x".encode("idna"); socket.getaddrinfo("localhost", 1)
                    os._exit(0)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        break
                    time.sleep(0.01)
                else:
                    hung += 1; os.kill(pid, 9); os.waitpid(pid, 0)
                handler.close()
            print("hung", hung)
            os._exit(0)
        """,
            timeout=300,
        )
        assert result.stdout.strip() == "hung 0", result.stderr


FORK_DURING_FIRST_TLS = """
import logging, multiprocessing, os, sys, threading, time
from tinybird_export import TinybirdHandler

inside = threading.Event()


def watch(frame, event, arg):
    # On threads started from now on (the sender): whether it is inside OpenSSL.
    if event in ("c_call", "c_return", "c_exception"):
        owner = getattr(arg, "__self__", None)
        module = owner.__module__ if isinstance(owner, type) else type(owner).__module__
        if module == "_ssl":
            (inside.set if event == "c_call" else inside.clear)()


threading.setprofile(watch)


def child_sends():
    log.warning("child %d", os.getpid())
    os._exit(0 if handler.flush(5) else 3)


how, count = os.environ["FORK_WITH"], 8
handler = TinybirdHandler(datasource="forked", flush_interval=60)
log = logging.getLogger("app"); log.propagate = False
log.addHandler(handler); log.warning("parent")
handler.flush(0)  # the sender starts the process's first https request now
children = []
end = time.monotonic() + 10
while len(children) < count and time.monotonic() < end:
    if not inside.wait(0.001):  # fork only while the sender is inside OpenSSL
        if handler.stats().sent:  # its first request is over
            break
        continue
    if how == "os.fork":
        pid = os.fork()
        if pid == 0:
            child_sends()
        children.append(pid)
    else:
        process = multiprocessing.get_context("fork").Process(target=child_sends)
        process.start()
        children.append(process)
stuck = 0
deadline = time.monotonic() + 20
for child in children:
    if isinstance(child, int):
        while not os.waitpid(child, os.WNOHANG)[0] and time.monotonic() < deadline:
            time.sleep(0.005)
    else:
        child.join(max(deadline - time.monotonic(), 0))
print(len(children), flush=True)
os._exit(0)
"""

SIGNAL_LOGGER = """
import logging, os, signal, sys, time
from tinybird_export import TinybirdEvents, TinybirdHandler
kind = sys.argv[1]
if kind == "handler":
    log = logging.getLogger("app"); log.propagate = False; log.setLevel(logging.INFO)
    producer = TinybirdHandler(flush_interval=0.05)
    log.addHandler(producer)
    emit = lambda text: log.info(text)
else:
    producer = TinybirdEvents(datasource="app_logs", flush_interval=0.05)
    emit = lambda text: producer.send({"event": text})
signals = 0
def on_alarm(signum, frame):
    global signals
    signals += 1
    emit("from the signal handler")
signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)  # 50 Hz
logged, deadline = 0, time.monotonic() + 2
while time.monotonic() < deadline:
    emit("main"); logged += 1
signal.setitimer(signal.ITIMER_REAL, 0)
print(logged, signals, producer.flush(30), producer.stats().dropped, flush=True)
"""


class TestSignalHandlers:
    @pytest.mark.parametrize("kind", ["handler", "events"])
    @pytest.mark.parametrize("run", [1, 2])
    def test_a_signal_handler_that_logs_never_deadlocks(
        self, server: EventsServer, tmp_path: Path, kind: str, run: int
    ) -> None:
        """A signal handler that logs, in a tight logging loop, never deadlocks."""
        script = tmp_path / "signals.py"
        script.write_text(SIGNAL_LOGGER)
        result = subprocess.run(
            [sys.executable, str(script), kind],
            env={**os.environ, **child_env(server)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        logged, signals, ok, dropped = result.stdout.split()
        # flush() returned (no deadlock), and is True unless the tight loop had some dropped
        assert ok == str(dropped == "0"), result.stderr
        events = [e["event"] for e in server.events()]
        # A tight loop may fill the queue (dropped and counted): all else arrives.
        assert len(events) + int(dropped) == int(logged) + int(signals)
        assert events.count("from the signal handler") > 10


class TestOpenTelemetryExit:
    def test_batch_processors_exit_within_the_budget_with_a_hanging_endpoint(
        self, server: EventsServer
    ) -> None:
        """The SDK passes ~30 s into each exporter's shutdown at exit; the exit budget
        bounds them all (two providers here)."""
        pytest.importorskip("opentelemetry.sdk")
        server.respond(Reply(hang=True))
        started = time.monotonic()
        result = run_python(
            """
            import logging
            from opentelemetry import trace
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
            from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
            from tinybird_export import TinybirdLogExporter, TinybirdSpanExporter
            tracer_provider = TracerProvider()
            tracer_provider.add_span_processor(BatchSpanProcessor(TinybirdSpanExporter()))
            trace.set_tracer_provider(tracer_provider)
            logger_provider = LoggerProvider()
            logger_provider.add_log_record_processor(
                BatchLogRecordProcessor(TinybirdLogExporter()))
            logging.getLogger().addHandler(LoggingHandler(logger_provider=logger_provider))
            with trace.get_tracer("t").start_as_current_span("span"):
                logging.warning("inside")
        """,
            {
                "TINYBIRD_HOST": server.url,
                "TINYBIRD_TOKEN": server.token or "",
                "TINYBIRD_FLUSH_TIMEOUT": "1",
                "TINYBIRD_EXIT_TIMEOUT": "2",
                "TINYBIRD_TIMEOUT": "30",
            },
            timeout=90,
        )
        elapsed = time.monotonic() - started
        server.release()
        assert elapsed < 1 + 2 + 5, (elapsed, result.stderr)  # budgets + start-up
        assert "not delivered" in result.stderr

    def test_entry_point_exporters_exit_within_the_budget(self, server: EventsServer) -> None:
        """OTEL_TRACES_EXPORTER=tinybird, as opentelemetry-instrument sets it up."""
        instrument = shutil.which("opentelemetry-instrument", path=os.path.dirname(sys.executable))
        if instrument is None:
            pytest.skip("opentelemetry-instrument is not installed (opentelemetry-distro)")
        server.respond(Reply(hang=True))
        started = time.monotonic()
        result = subprocess.run(
            [
                instrument,
                sys.executable,
                "-c",
                "import logging\nfrom opentelemetry import trace\n"
                "with trace.get_tracer('t').start_as_current_span('s'):\n"
                "    logging.getLogger('app').warning('inside')\n",
            ],
            env={
                **os.environ,
                "OTEL_TRACES_EXPORTER": "tinybird",
                "OTEL_LOGS_EXPORTER": "tinybird",
                "OTEL_METRICS_EXPORTER": "none",
                "OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED": "true",
                "TINYBIRD_HOST": server.url,
                "TINYBIRD_TOKEN": server.token or "",
                "TINYBIRD_FLUSH_TIMEOUT": "1",
                "TINYBIRD_EXIT_TIMEOUT": "2",
            },
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        elapsed = time.monotonic() - started
        server.release()
        assert elapsed < 1 + 2 + 8, (elapsed, result.stderr)


class TestRecursion:
    def test_a_queue_listeners_handler_never_feeds_on_its_own_sends(
        self, server: EventsServer
    ) -> None:
        """Behind a QueueListener, urllib3's records of our sends are dropped."""
        server.script(*[Reply(status=503)] * 2)
        code = textwrap.dedent("""
            import logging, logging.handlers, queue, sys, time
            from tinybird_export import TinybirdHandler
            root = logging.getLogger(); root.setLevel(logging.DEBUG)
            records = queue.SimpleQueue()
            root.addHandler(logging.handlers.QueueHandler(records))
            handler = TinybirdHandler(flush_interval=0.05)
            listener = logging.handlers.QueueListener(records, handler)
            listener.start()
            logging.getLogger("app").info("the only record")
            while handler.stats().emitted == 0:  # the listener hands it on
                time.sleep(0.01)
            print(handler.flush(20), flush=True)
            sys.stdin.readline()  # the test watches the server meanwhile
            listener.stop()
            print(handler.stats().emitted, flush=True)
        """)
        with talk_to_python(["-c", code], child_env(server)) as proc:
            assert proc.stdout is not None and proc.stdin is not None
            assert proc.stdout.readline().strip() == "True"
            settled = server.request_count
            # urllib3's debug records of those sends would come back as ~1 request/s.
            assert not server.wait_for(lambda: server.request_count > settled, 2.5), [
                (r.status, r.body[:300]) for r in server.requests
            ]
            proc.stdin.write("\n")
            proc.stdin.flush()
            out, err = proc.communicate(timeout=30)
        assert out.strip() == "1", err
        assert [e["logger"] for e in server.events()] == ["app"]


class TestLateSends:
    def test_events_sent_by_an_earlier_atexit_hook_arrive(self, server: EventsServer) -> None:
        """Events sent by an atexit hook that runs after the drain arrive."""
        result = run_python(
            """
            import atexit
            atexit.register(lambda: [events.send({"event": f"late {i}"}) for i in range(100)])
            from tinybird_export import TinybirdEvents
            events = TinybirdEvents(datasource="late", flush_interval=60)
            events.send({"event": "before exit"})
        """,
            child_env(server),
        )
        assert result.returncode == 0, result.stderr
        assert len(server.events("late")) == 101, result.stderr

    def test_events_sent_from_del_at_exit_arrive(self, server: EventsServer) -> None:
        """Events sent from a __del__ at exit arrive."""
        result = run_python(
            """
            import atexit
            # Runs after the package's exit drain: the session is collected then.
            atexit.register(lambda: globals().pop("session"))
            from tinybird_export import TinybirdEvents
            events = TinybirdEvents(datasource="late", flush_interval=60)
            class Session:
                def __del__(self):
                    events.send({"event": "session closed"})
            session = Session()
        """,
            child_env(server),
        )
        assert result.returncode == 0, result.stderr
        assert [e["event"] for e in server.events("late")] == ["session closed"], result.stderr


LATE_IN_A_CHILD = """
import logging, multiprocessing, sys
from multiprocessing import util
from tinybird_export import TinybirdHandler
log = logging.getLogger("app"); log.propagate = False; log.setLevel(logging.INFO)
log.addHandler(TinybirdHandler(flush_interval=60))

def late():
    for i in range(50):
        log.info("late %d", i)

def work():
    log.info("task")
    util.Finalize(None, late, exitpriority=1)  # runs after the package's drain (100)

if __name__ == "__main__":
    process = multiprocessing.get_context(sys.argv[1]).Process(target=work)
    process.start(); process.join(30)
    print(process.exitcode, flush=True)
"""


class TestLateRecords:
    @pytest.mark.parametrize("method", ["fork", "spawn"])
    def test_records_of_a_later_finalizer_in_a_child_arrive(
        self, server: EventsServer, tmp_path: Path, method: str
    ) -> None:
        """A multiprocessing child's finalizer that runs after the exit drain logs 50
        records: all arrive (47 of 50 were lost, unsaid)."""
        (tmp_path / "late.py").write_text(LATE_IN_A_CHILD)
        result = subprocess.run(
            [sys.executable, str(tmp_path / "late.py"), method],
            env={**os.environ, **child_env(server)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.stdout.strip() == "0", result.stderr
        events = sorted(e["event"] for e in server.events())
        assert events == sorted(["task", *(f"late {i}" for i in range(50))]), result.stderr

    def test_an_event_sent_during_teardown_is_counted_at_once_with_why(
        self, server: EventsServer
    ) -> None:
        """A __del__ run by the interpreter's teardown (a module global), once nothing can
        be sent: counted as after_exit and said so at once, not after the whole exit
        budget as "the endpoint did not answer"; one collected by the teardown's first
        garbage collection (a cycle), while sending still works, arrives."""
        started = time.monotonic()
        result = run_python(
            """
            from tinybird_export import TinybirdEvents
            events = TinybirdEvents(datasource="late", flush_interval=60, exit_timeout=5)
            class Session:
                def __init__(self, name):
                    self.name = name
                def __del__(self):
                    events.send({"event": self.name})
                    print(self.name, dict(events.stats().dropped_by_reason), flush=True)
            def cycle():
                session = Session("collected in a cycle"); session.me = session
            cycle()
            session = Session("a module global")
            events.send({"event": "before exit"})
        """,
            child_env(server),
        )
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        assert elapsed < 4, (elapsed, result.stderr)  # not the 5 s budget
        arrived = sorted(e["event"] for e in server.events("late"))
        assert arrived == ["before exit", "collected in a cycle"], result.stderr
        assert "a module global {'after_exit': 1}" in result.stdout, result.stdout
        assert "1 event(s) not delivered after the exit drain" in result.stderr
        assert "teardown" in result.stderr and "did not answer" not in result.stderr
