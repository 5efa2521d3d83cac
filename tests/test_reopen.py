"""A handler closed by a later logging configuration but still attached reopens and
delivers, as logging.FileHandler does: a second dictConfig in process, real uvicorn with its
default log_config in a subprocess, and not once logging.shutdown closed it at exit."""

from __future__ import annotations

import logging
import logging.config
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import PRELUDE, child_env, run_python
from tests.test_asgi import send_requests, stop, uvicorn
from tinybird_export import TinybirdHandler
from tinybird_export.testing import EventsServer

pytest.importorskip("uvicorn")

CONFIGURED_FIRST = """
import logging, logging.config
import uvicorn
from tinybird_export.asgi import RequestContextMiddleware

# The app configures logging first (flush_interval 60 s: what arrives was delivered by the
# stop path); uvicorn.run() below applies its default log_config, a dictConfig that closes
# every existing handler and leaves this one on the root logger.
logging.config.dictConfig({
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"tinybird": {"class": "tinybird_export.TinybirdHandler", "flush_interval": 60}},
    "root": {"handlers": ["tinybird"], "level": "INFO"},
})
log = logging.getLogger("shop")


async def raw_app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    number = scope["path"].rsplit("/", 1)[-1]
    log.info("request", extra={"n": number})
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": number.encode()})


app = RequestContextMiddleware(raw_app)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=0)  # its default log_config
"""


@pytest.fixture
def root_handler(server: EventsServer) -> Iterator[TinybirdHandler]:
    """A TinybirdHandler put on a private logger by dictConfig, as an app configures it."""
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {
                "tinybird": {
                    "class": "tinybird_export.TinybirdHandler",
                    "datasource": "reopened",
                    "host": server.url,
                    "token": server.token,
                }
            },
            "loggers": {"reopen.app": {"handlers": ["tinybird"], "level": "INFO"}},
        }
    )
    logger = logging.getLogger("reopen.app")
    (handler,) = logger.handlers
    assert isinstance(handler, TinybirdHandler)
    yield handler
    logger.handlers.clear()
    handler.close()


def test_a_second_dictconfig_closes_the_handler_and_records_still_arrive(
    server: EventsServer, root_handler: TinybirdHandler, capsys: pytest.CaptureFixture[str]
) -> None:
    """A later dictConfig that does not name the handler's logger closes the handler and
    leaves it attached: its records are delivered (all were counted as closed), the
    reopening said once, and flush() is True."""
    log = logging.getLogger("reopen.app")
    log.info("before")
    logging.config.dictConfig(
        {"version": 1, "disable_existing_loggers": False, "loggers": {"reopen.other": {}}}
    )
    assert log.handlers == [root_handler]  # still attached, and closed
    for i in range(20):
        log.info("after %d", i)
    assert root_handler.flush(10) is True
    events = [e["event"] for e in server.events("reopened")]
    assert events == ["before", *(f"after {i}" for i in range(20))]
    stats = root_handler.stats()
    assert (stats.emitted, stats.sent, stats.dropped) == (21, 21, 0)
    err = capsys.readouterr().err
    assert err.count("It reopened") == 1 and "'reopened'" in err


def test_uvicorn_default_log_config_after_the_app_configured_logging(
    server: EventsServer, tmp_path: Path
) -> None:
    """uvicorn.run(app) with its default log_config, after the app configured logging: the
    request records are delivered at SIGTERM by the middleware's lifespan flush (0 of 20
    were: all counted as closed)."""
    (tmp_path / "configured_first.py").write_text(CONFIGURED_FIRST)
    command = [sys.executable, "configured_first.py"]
    with uvicorn(command, child_env(server), tmp_path) as (proc, url):
        send_requests(url, 20)
        code, err = stop(proc, signal.SIGTERM)
    assert code == -signal.SIGTERM, err
    requests = [e for e in server.events() if e["event"] == "request"]
    assert sorted(int(e["n"]) for e in requests) == list(range(20)), err
    assert "It reopened" in err


def test_a_record_after_logging_shutdown_at_exit_is_counted_not_reopened(
    server: EventsServer,
) -> None:
    """At exit, logging.shutdown closes the handler for good: a record after it (an atexit
    hook registered before logging was imported) is counted as after_exit and said, and
    the handler does not reopen into an exiting process."""
    result = run_python(
        """
        import atexit
        def late():
            log.info("after logging.shutdown")
            print(dict(handler.stats().dropped_by_reason), flush=True)
        atexit.register(late)  # before logging's own hook: runs after logging.shutdown
        import logging
        from tinybird_export import TinybirdHandler
        log = logging.getLogger("app"); log.propagate = False; log.setLevel(logging.INFO)
        handler = TinybirdHandler(flush_interval=60)
        log.addHandler(handler)
        log.info("before exit")
        """,
        child_env(server),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "{'after_exit': 1}", result.stderr
    assert [e["event"] for e in server.events()] == ["before exit"]
    assert "after it was closed at exit" in result.stderr
    assert "It reopened" not in result.stderr


def test_a_signal_handler_that_logs_during_a_reopen_does_not_deadlock(
    server: EventsServer,
) -> None:
    """A signal handler (or a __del__) that logs while its thread is inside the handler's
    reopen: its record is parked and queued by the reopen, not waited for (the reopen's
    lock was not re-entrant: the thread deadlocked on itself)."""
    result = run_python(
        PRELUDE
        + """
            import faulthandler, signal
            from tinybird_export import _process
            faulthandler.dump_traceback_later(10, exit=True)  # a deadlock: its stack, exit 1
            handler = TinybirdHandler(flush_interval=60)
            log.addHandler(handler)
            handler.close()  # as dictConfig does: it stays attached
            signal.signal(signal.SIGUSR1, lambda *_: log.info("from a signal handler"))
            attach = _process.Process.attach
            def attach_signalled(self, *args, **kwargs):
                signal.raise_signal(signal.SIGUSR1)  # its handler runs now, in the reopen
                return attach(self, *args, **kwargs)
            _process.Process.attach = attach_signalled
            log.info("reopens")
            _process.Process.attach = attach
            print(handler.flush(10), handler.stats().emitted, flush=True)
        """,
        child_env(server),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "2"], result.stderr
    events = sorted(e["event"] for e in server.events())
    assert events == ["from a signal handler", "reopens"]


def test_a_fork_during_another_threads_reopen_leaves_the_child_able_to_log(
    server: EventsServer,
) -> None:
    """A fork while another thread is inside the handler's reopen: the child's reopen is
    not blocked by the parent thread's claim (the lock was copied held and never rebuilt:
    the child's first record hung forever)."""
    result = run_python(
        PRELUDE
        + """
            import signal
            from tinybird_export import _process
            handler = TinybirdHandler(flush_interval=60)
            log.addHandler(handler)
            handler.close()
            inside, forked = threading.Event(), threading.Event()
            attach = _process.Process.attach
            def attach_held(self, *args, **kwargs):
                if threading.current_thread().name == "reopener":
                    inside.set()
                    forked.wait(10)  # the fork happens while this thread reopens
                return attach(self, *args, **kwargs)
            _process.Process.attach = attach_held
            reopener = threading.Thread(target=log.info, args=("reopens",), name="reopener")
            reopener.start()
            inside.wait(10)
            pid = os.fork()
            if pid == 0:
                signal.alarm(10)  # a hung child dies by SIGALRM
                log.info("from the child")
                os._exit(0 if handler.flush(10) else 3)
            forked.set()
            reopener.join(10)
            _, status = os.waitpid(pid, 0)
            print(os.waitstatus_to_exitcode(status), handler.flush(10), flush=True)
        """,
        child_env(server),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "True"], result.stderr
    events = sorted(e["event"] for e in server.events())
    assert events == ["from the child", "reopens"]
