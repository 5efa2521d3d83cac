"""Shared fixtures: a real Events API test server and handlers that are closed afterwards."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.helpers import ROOT
from tinybird_export import TinybirdEvents, TinybirdHandler, _diagnostics
from tinybird_export.testing import EventsServer

OFFLINE = os.path.join(ROOT, "tests", "offline")

# Nothing leaves the machine: this process and every Python subprocess it starts refuse
# non-loopback lookups and connections (tests/offline/sitecustomize.py).
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [OFFLINE, ROOT, os.environ.get("PYTHONPATH", "")])
)
sys.path.insert(0, OFFLINE)
import sitecustomize  # noqa: E402, F401 - the guard, for this process too

# Ctrl-C reaches the processes the tests start as it does at a terminal, even when the suite
# itself runs as a shell's background job (which starts with SIGINT ignored, and an ignored
# signal stays ignored across exec): a handled one is reset to its default instead.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_the_machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail the run if any process of it tried to reach beyond loopback."""
    record = tmp_path_factory.mktemp("offline") / "blocked.txt"
    record.touch()
    os.environ["OFFLINE_GUARD_LOG"] = str(record)
    yield
    attempts = record.read_text()
    if attempts:
        pytest.fail(f"the test suite tried to leave the machine:\n{attempts}", pytrace=False)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's own Tinybird settings."""
    for name in list(os.environ):
        if name.startswith("TINYBIRD_") or name == "OTEL_SERVICE_NAME":
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _fresh_diagnostics() -> None:
    """Each test sees the package's once-per-process messages afresh."""
    _diagnostics._said.clear()


@pytest.fixture
def server() -> Iterator[EventsServer]:
    with EventsServer() as events_server:
        yield events_server


@pytest.fixture
def make_handler(server: EventsServer) -> Iterator[Callable[..., TinybirdHandler]]:
    """Build handlers pointed at ``server``; all are closed after the test."""
    made: list[TinybirdHandler] = []

    def make(**settings: Any) -> TinybirdHandler:
        settings.setdefault("datasource", "app_logs")
        settings.setdefault("host", server.url)
        settings.setdefault("token", server.token)
        handler = TinybirdHandler(**settings)
        made.append(handler)
        return handler

    yield make
    for handler in made:
        handler.close()


@pytest.fixture
def make_events(server: EventsServer) -> Iterator[Callable[..., TinybirdEvents]]:
    made: list[TinybirdEvents] = []

    def make(**settings: Any) -> TinybirdEvents:
        settings.setdefault("datasource", "simple_events")
        settings.setdefault("host", server.url)
        settings.setdefault("token", server.token)
        sender = TinybirdEvents(**settings)
        made.append(sender)
        return sender

    yield make
    for sender in made:
        sender.close()


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A private logger that does not propagate to the root."""
    log = logging.getLogger(f"test.{os.urandom(4).hex()}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    yield log
    log.handlers.clear()
