"""The runtime checks (serverless handler without flush_after, logs stored twice, uvicorn
without the middleware): made at a producer's first batches, never per record, and decided
from the documented environment of each platform."""

from __future__ import annotations

import logging
import sys
import types

import pytest

from tests.helpers import RecordingTransport, unit_config, unit_process
from tinybird_export import _runtime_checks
from tinybird_export._producer import Producer


def test_checks_run_once_per_new_batch_until_decided(monkeypatch: pytest.MonkeyPatch) -> None:
    """500 records in one batch ask once; a new batch asks again; once decided, never."""
    answers = [False, True]
    asked: list[str] = []

    def at_first_batches(label: str) -> bool:
        asked.append(label)
        return answers.pop(0)

    monkeypatch.setattr(_runtime_checks, "at_first_batches", at_first_batches)
    transport = RecordingTransport()
    producer = Producer(unit_config(), "TinybirdHandler", process=unit_process(transport))
    for _ in range(500):
        producer.offer(b'{"event":"x"}')
    assert asked == ["TinybirdHandler"]
    assert producer.flush(5)
    for _ in range(500):
        producer.offer(b'{"event":"y"}')
    assert producer.flush(5)
    producer.offer(b'{"event":"z"}')
    assert asked == ["TinybirdHandler", "TinybirdHandler"]  # decided at the second batch


@pytest.mark.parametrize(
    ("environ", "platform"),
    [
        ({"AWS_LAMBDA_FUNCTION_NAME": "fn"}, "AWS Lambda"),
        ({"AWS_EXECUTION_ENV": "AWS_Lambda_python3.12"}, "AWS Lambda"),
        ({"FUNCTION_TARGET": "handler", "K_SERVICE": "fn"}, "Cloud Run functions"),
        ({"FUNCTION_TARGET": "handler"}, "Google Cloud Functions"),
        ({"K_SERVICE": "web"}, None),  # a Cloud Run service: not a function
        ({"AWS_EXECUTION_ENV": "AWS_ECS_FARGATE"}, None),
        ({}, None),
    ],
)
def test_function_platform_from_the_documented_variables(
    environ: dict[str, str], platform: str | None
) -> None:
    """Lambda and Google's functions are told by their reserved environment variables."""
    assert _runtime_checks.function_platform(environ) == platform


def test_the_configured_handler_is_found_once_its_module_defines_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Lambda's _HANDLER (a path with slashes) and Google's FUNCTION_TARGET in the
    FUNCTION_SOURCE file's module resolve once the module has the function."""
    module = types.ModuleType("src.app")
    monkeypatch.setitem(sys.modules, "src.app", module)
    monkeypatch.setenv("_HANDLER", "src/app.handler")
    assert _runtime_checks._configured_handler() is None  # still being imported
    module.handler = lambda event, context: None  # type: ignore[attr-defined]
    assert _runtime_checks._configured_handler() == "src.app.handler"
    monkeypatch.delenv("_HANDLER")
    main = types.ModuleType("main")
    main.entry = lambda request: None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "main", main)
    monkeypatch.setenv("FUNCTION_TARGET", "entry")
    assert _runtime_checks._configured_handler() == "main.entry"
    monkeypatch.setenv("FUNCTION_SOURCE", "/workspace/other.py")
    assert _runtime_checks._configured_handler() is None


def test_opentelemetry_logging_handlers_are_told_by_class_without_importing_it() -> None:
    """Any LoggingHandler of an opentelemetry module, or a subclass; no other handler."""
    otel_like = type("LoggingHandler", (logging.Handler,), {"__module__": "opentelemetry.x"})
    subclass = type("Mine", (otel_like,), {"__module__": "app"})
    unrelated = type("LoggingHandler", (logging.Handler,), {"__module__": "app"})
    assert _runtime_checks._is_otel_logging_handler(otel_like())
    assert _runtime_checks._is_otel_logging_handler(subclass())
    assert not _runtime_checks._is_otel_logging_handler(unrelated())
    assert not _runtime_checks._is_otel_logging_handler(logging.StreamHandler())
