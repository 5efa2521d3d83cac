"""Serverless functions: ``flush_after`` in real subprocesses that play the platform (call the
handler, then freeze the process with SIGSTOP the moment it returns), counting what had
arrived at the server while the process was frozen."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import child_env, run_python, wait_until
from tinybird_export.testing import EventsServer, Reply

# The function: 20 events per invocation, from a handler module as Lambda imports it.
FUNCTION = """
import asyncio, logging, os
from tinybird_export import TinybirdHandler
from tinybird_export.serverless import flush_after

log = logging.getLogger("fn")
log.setLevel(logging.INFO)
log.propagate = False
log.addHandler(TinybirdHandler())


def work(event, context):
    for i in range(20):
        log.info("step", extra={"i": i, "invocation": event["n"]})
    return "ok"


async def async_work(event, context):
    await asyncio.sleep(0)
    return work(event, context)


handler = work
if os.environ.get("DECORATE") == "sync":
    handler = flush_after(work)
elif os.environ.get("DECORATE") == "async":
    handler = flush_after(async_work)
elif os.environ.get("DECORATE") == "timeout":
    handler = flush_after(timeout=0.5)(work)
"""

# The platform: import the handler module named by _HANDLER, call it with a context that
# tells the remaining time, say so, and freeze at once (Lambda freezes the process when the
# handler has returned); each SIGCONT is the next invocation.
PLATFORM = """
import asyncio, importlib, os, signal, sys, time
sys.path.insert(0, os.getcwd())
module_name, _, name = os.environ["_HANDLER"].rpartition(".")
handler = getattr(importlib.import_module(module_name), name)


class Context:
    def __init__(self, millis):
        self.deadline = time.monotonic() + millis / 1000

    def get_remaining_time_in_millis(self):
        return int((self.deadline - time.monotonic()) * 1000)


for n in range(int(os.environ.get("INVOCATIONS", "1"))):
    millis = os.environ.get("REMAINING_MS")
    context = Context(int(millis)) if millis else None
    started = time.monotonic()
    result = handler({"n": n}, context)
    if asyncio.iscoroutine(result):
        result = asyncio.run(result)
    print(f"returned {result} in {time.monotonic() - started:.3f}", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
"""


class Platform:
    """A running function process: its invocations, its freezes, its stderr at the end."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.stderr = ""

    def next_return(self) -> float:
        """Wait for the handler to return and the process to be frozen; the seconds the
        invocation took."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("returned ok in "), line + self.finish()
        assert wait_until(self._stopped, timeout=10), "the process did not freeze"
        return float(line.rsplit(" ", 1)[1])

    def _stopped(self) -> bool:
        pid, status = os.waitpid(self.proc.pid, os.WUNTRACED | os.WNOHANG)
        return pid == self.proc.pid and os.WIFSTOPPED(status)

    def thaw(self) -> None:
        """The next invocation."""
        os.kill(self.proc.pid, signal.SIGCONT)

    def finish(self) -> str:
        """Kill it, as the platform recycles an instance; its stderr."""
        if self.proc.poll() is None:
            self.proc.kill()
            os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process dies once resumed
        _, self.stderr = self.proc.communicate(timeout=30)
        return self.stderr


@pytest.fixture
def platform(server: EventsServer, tmp_path: Path) -> Iterator[Callable[..., Platform]]:
    """Start a function process with ``start(**env)``; killed after the test."""
    (tmp_path / "fn.py").write_text(textwrap.dedent(FUNCTION))
    (tmp_path / "runtime.py").write_text(textwrap.dedent(PLATFORM))
    started: list[Platform] = []

    def start(**env: str) -> Platform:
        environment = {
            **os.environ,
            **child_env(server),
            "AWS_LAMBDA_FUNCTION_NAME": "fn",
            "_HANDLER": "fn.handler",
            "TINYBIRD_FLUSH_INTERVAL": "10",  # nothing goes out on its own before the freeze
            **env,
        }
        proc = subprocess.Popen(
            [sys.executable, "runtime.py"],
            cwd=tmp_path,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(Platform(proc))
        return started[-1]

    yield start
    for each in started:
        each.finish()


def unique(server: EventsServer) -> set[tuple[int, int]]:
    """The (invocation, step) of every event that arrived, duplicates counted once."""
    return {(e["invocation"], e["i"]) for e in server.events()}


@pytest.mark.parametrize("decorate", ["sync", "async"])
def test_what_an_invocation_logged_has_arrived_when_the_process_freezes(
    server: EventsServer, platform: Callable[..., Platform], decorate: str
) -> None:
    """With @flush_after, the 20 events of each invocation are at the server before the
    handler returns: the process is frozen right after, and they are there."""
    function = platform(DECORATE=decorate, INVOCATIONS="2", REMAINING_MS="3000")
    function.next_return()
    assert unique(server) == {(0, i) for i in range(20)}
    function.thaw()
    function.next_return()
    assert unique(server) == {(n, i) for n in range(2) for i in range(20)}
    assert "tinybird-export" not in function.finish()


def test_without_it_nothing_has_arrived_and_it_is_said_once(
    server: EventsServer, platform: Callable[..., Platform]
) -> None:
    """Undecorated, the events wait in the frozen process (0 of 20 arrived), and stderr
    names the handler and the fix, once."""
    function = platform(DECORATE="", INVOCATIONS="2")
    function.next_return()
    assert server.events() == []
    function.thaw()
    function.next_return()
    err = function.finish()
    assert err.count("runs in AWS Lambda, and its handler fn.handler is not wrapped") == 1, err
    assert "@flush_after" in err


def test_a_hanging_endpoint_costs_the_remaining_time_at_most_then_the_spool_keeps_them(
    server: EventsServer, platform: Callable[..., Platform], tmp_path: Path
) -> None:
    """The endpoint hangs: the handler returns within the invocation's remaining time less
    the margin, and what is left is spooled (said once)."""
    server.respond(Reply(hang=True))
    spool = tmp_path / "spool"
    function = platform(DECORATE="sync", REMAINING_MS="1500", TINYBIRD_SPOOL_DIR=str(spool))
    took = function.next_return()
    assert 0.9 <= took < 1.5, took  # 1.5 s left, less the 0.5 s margin: 1 s of flushing
    assert len(list(spool.glob("*.tbspool"))) == 1, "nothing was spooled"
    err = function.finish()
    assert err.count("20 event(s) were not delivered before work returned") == 1, err
    assert "20 were spooled (sent at the next invocation)" in err
    server.release()


def test_the_next_invocation_sends_the_spooled_events_and_its_own_before_returning(
    server: EventsServer, platform: Callable[..., Platform], tmp_path: Path
) -> None:
    """After a spilled invocation, the endpoint answers again: the next invocation returns
    once the spooled events and its own are delivered."""
    server.respond(Reply(hang=True))
    function = platform(
        DECORATE="sync",
        INVOCATIONS="2",
        REMAINING_MS="1500",
        TINYBIRD_SPOOL_DIR=str(tmp_path / "spool"),
    )
    function.next_return()
    server.release()
    function.thaw()
    function.next_return()
    assert unique(server) == {(n, i) for n in range(2) for i in range(20)}


def test_without_a_context_or_spool_the_timeout_bounds_it_and_the_rest_is_reported(
    server: EventsServer, platform: Callable[..., Platform]
) -> None:
    """No context (Cloud Run functions pass none): flush_after(timeout=0.5) bounds the wait,
    and what stays queued is counted and said."""
    server.respond(Reply(hang=True))
    function = platform(DECORATE="timeout", AWS_LAMBDA_FUNCTION_NAME="", FUNCTION_TARGET="handler")
    took = function.next_return()
    assert 0.4 <= took < 1.5, took
    err = function.finish()
    assert "20 stay queued for the next invocation" in err, err
    server.release()


def test_bad_timeout_is_refused_naming_the_setting() -> None:
    """A negative timeout (or TINYBIRD_FLUSH_TIMEOUT) raises at decoration, naming it."""
    from tinybird_export.serverless import flush_after

    with pytest.raises(ValueError, match="flush_timeout"):
        flush_after(timeout=-1)
    result = run_python(
        """
        from tinybird_export.serverless import flush_after
        try:
            flush_after(lambda event, context: None)
        except ValueError as exc:
            print(exc)
        """,
        {"TINYBIRD_FLUSH_TIMEOUT": "soon"},
    )
    assert "TINYBIRD_FLUSH_TIMEOUT" in result.stdout, result.stderr
