"""Helpers the tests share, in one place: subprocesses (exit, fork and signals are tested
for real), the children's environment, free and closed ports, polling with a deadline, the
package's threads, and the recording transport of the unit tests."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from tinybird_export._batch import Limits
from tinybird_export._channel import Channel
from tinybird_export._client import Attempt
from tinybird_export._config import TinybirdConfig
from tinybird_export._process import Process
from tinybird_export.testing import EventsServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER_THREAD = "tinybird-export-worker"

# Indented like the snippets of the tests, so that textwrap.dedent() sees one margin.
PRELUDE = textwrap.indent(
    textwrap.dedent("""
    import logging, os, sys, threading, time
    from tinybird_export import TinybirdHandler
    log = logging.getLogger("app")
    log.propagate = False
    log.setLevel(logging.INFO)
"""),
    " " * 12,
)


SIGNALLED_INSIDE = """
            import os, signal
            class SignalledInside(bytes):  # what a SIGTERM landing inside offer() does
                def __len__(self):
                    os.kill(os.getpid(), signal.SIGTERM)
                    return super().__len__()
"""
"""A line whose length, read inside ``Channel.offer`` under its lock, sends this process
a SIGTERM: a signal that lands inside an offer, made certain (indented as ``PRELUDE``)."""


def run_python(
    code: str,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    *,
    script: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (real exit, fork and signal behaviour); from the
    file ``script`` when given (multiprocessing's spawn and forkserver re-import it).
    """
    if script is None:
        command = [sys.executable, "-c", textwrap.dedent(code)]
    else:
        script.write_text(textwrap.dedent(code))
        command = [sys.executable, str(script)]
    return subprocess.run(
        command,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def talk_to_python(
    args: list[str], env: dict[str, str], *, prefix: list[str] | None = None
) -> subprocess.Popen[str]:
    """Start ``python *args`` (after the command ``prefix``, if any) with stdin, stdout and
    stderr piped (text), for a test that drives the child step by step (use it as a context
    manager)."""
    return subprocess.Popen(
        [*(prefix or []), sys.executable, *args],
        env={**os.environ, **env},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_example(name: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``examples/<name>`` as a newcomer would: no ``TINYBIRD_*`` in the environment, so
    it starts and queries its own embedded local server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYBIRD_")}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def child_env(server: EventsServer, **extra: str) -> dict[str, str]:
    """The environment of a child process that sends to ``server`` (data source app_logs)."""
    return {
        "TINYBIRD_HOST": server.url,
        "TINYBIRD_TOKEN": server.token or "",
        "TINYBIRD_DATASOURCE": "app_logs",
        **extra,
    }


def terminate_when_ready(code: str, server: EventsServer) -> tuple[int, str, str]:
    """Run ``code`` in a child sending to ``server``, SIGTERM it once it prints ``ready``,
    and return its exit status, stdout and stderr."""
    with subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **child_env(server)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


def free_port() -> int:
    """A port nothing listens on right now (for a server the test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port_url() -> str:
    """A loopback URL where connections are refused."""
    return f"http://127.0.0.1:{free_port()}"


def by_logger(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The events a given logger emitted."""
    return [event for event in events if event["logger"] == name]


def wait_until(predicate: Callable[[], bool], timeout: float = 10) -> bool:
    """Poll ``predicate`` until it holds or ``timeout``: for state no event announces."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def fail_once(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    """Make ``module.name`` raise RuntimeError on its first call (a bug inside the loop)."""
    original = getattr(module, name)
    calls: list[int] = []

    def broken(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected bug")
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, broken)
    return calls


def worker_threads() -> set[threading.Thread]:
    """The package's sender threads alive now (they are all named for it)."""
    return {t for t in threading.enumerate() if t.name == WORKER_THREAD and t.is_alive()}


@dataclasses.dataclass
class Post:
    """One request as a recording transport saw it."""

    datasource: str
    body: bytes
    wait: bool
    deadline: float | None
    gzipped: bool


Answer = Attempt | BaseException | Callable[["Post"], Attempt]


class RecordingTransport:
    """A transport for the unit tests: records each request and answers from a script (an
    ``Attempt``, an exception to raise, or a function of the request), then ``default``.
    """

    def __init__(self, *script: Answer, default: Answer | None = None) -> None:
        self.posts: list[Post] = []
        self.script = list(script)
        self.default: Answer = default if default is not None else accepted()
        self.closed = False

    def post(
        self,
        datasource: str,
        ndjson: bytes | bytearray,
        *,
        wait: bool,
        read_timeout: float,
        deadline: float | None = None,
        gzipped: bytes | None = None,
        connect_timeout: float | None = None,
    ) -> Attempt:
        """Record the request and answer it."""
        import zlib

        body = zlib.decompress(gzipped, 31) if gzipped is not None else bytes(ndjson)
        post = Post(datasource, body, wait, deadline, gzipped is not None)
        self.posts.append(post)
        answer = self.script.pop(0) if self.script else self.default
        if isinstance(answer, BaseException):
            raise answer
        return answer(post) if callable(answer) else answer

    def redact(self, text: str) -> str:
        """Nothing to hide here."""
        return text

    def close(self) -> None:
        """Remember it was closed."""
        self.closed = True

    def lines(self) -> list[bytes]:
        """Every line of every request, in order."""
        return [line for post in self.posts for line in post.body.splitlines()]


def accepted(quarantined: int = 0) -> Attempt:
    """A 202, as the Events API answers."""
    return Attempt(202, {}, quarantined_rows=quarantined, wire_bytes=10)


def answered(status: int, headers: Mapping[str, str] | None = None, error: str = "") -> Attempt:
    """An answer with ``status``."""
    return Attempt(status, dict(headers or {}), error=error or f"status {status}")


def refused() -> Attempt:
    """A transport failure: the connection was refused."""
    return Attempt(None, {}, error="cannot connect (refused)", kind="refused")


def make_channel(
    datasource: str = "ds",
    *,
    rows: int = 1000,
    nbytes: int = 1 << 20,
    max_bytes: int = 10**9,
    max_events: int = 10**6,
    interval: float = 1.0,
    wait: bool = False,
) -> Channel:
    """A channel with generous bounds unless told otherwise."""
    limits = Limits(
        queue_max_events=max_events,
        queue_max_bytes=max_bytes,
        batch_max_rows=rows,
        batch_max_bytes=nbytes,
        flush_interval=interval,
    )
    return Channel(datasource, "http://127.0.0.1:9", wait=wait, limits=limits)


def unit_process(transport: RecordingTransport) -> Process:
    """A process owner of its own (not the package's PROCESS), whose workers all send
    through ``transport``."""
    return Process(transport=lambda settings: transport)


def unit_config(**settings: Any) -> TinybirdConfig:
    """Settings for a producer of a unit test: a loopback host nothing is sent to, no
    threads (flush and exit send on the calling thread)."""
    values = {
        "datasource": "app_logs",
        "host": "http://127.0.0.1:9",
        "token": "unit-token",
        "background": False,
        **settings,
    }
    return TinybirdConfig.resolve(values, environ={})
