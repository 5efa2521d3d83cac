"""Checks of how the process runs that the package can see but not fix: each said once on
stderr, with the fix, and never made on the hot path of a record.

They run when a producer starts and at its first batches (``Producer._wake``: once per new
partial batch, not per record), until each is decided:

- **uvicorn without the ASGI middleware** (``_uvicorn``): a logger filter is installed once
  uvicorn is imported, and checks at uvicorn's first request line.
- **A serverless function without ``flush_after``**: in AWS Lambda or Google Cloud Run
  functions (Cloud Functions), once the function's configured handler has been imported
  (``_HANDLER``; ``FUNCTION_TARGET`` in the ``FUNCTION_SOURCE`` module), if no handler of
  the process was wrapped by ``tinybird_export.serverless.flush_after``. The platform
  freezes the process when the handler returns, so the sender thread gets no time then.
- **The same logs stored twice**: a logger whose records reach both a ``TinybirdHandler``
  and OpenTelemetry's ``LoggingHandler`` while a ``TinybirdLogExporter`` is open (what the
  ``LoggingHandler`` hands to the SDK goes to Tinybird too). Checked at the first batch of
  each ``TinybirdHandler`` and each ``TinybirdLogExporter``: whichever is attached last,
  its first record finds the other.
"""

from __future__ import annotations

import logging
import os
import sys
import weakref
from typing import Any, Final

from tinybird_export import _diagnostics, _uvicorn

_LOG_PRODUCERS: Final = frozenset({"TinybirdHandler", "TinybirdLogExporter"})
_log_exporters: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_state = {"flush_after": False, "serverless_decided": False}


def producer_started() -> None:
    """A producer was constructed (and is enabled)."""
    _uvicorn.watch_for_missing_middleware()


def at_first_batches(label: str) -> bool:
    """A producer (``label``: "TinybirdHandler"...) queued a new batch; whether every check
    is decided for it (then it stops asking).
    """
    try:
        _uvicorn.watch_for_missing_middleware()  # uvicorn imported after the producer
        if label in _LOG_PRODUCERS:
            check_logs_stored_twice()
        return _serverless_decided()
    except Exception:  # noqa: BLE001 - a diagnostic must never hurt the application
        return True


# -- serverless functions ------------------------------------------------------------------


def flush_after_used() -> None:
    """``flush_after`` wrapped a handler in this process."""
    _state["flush_after"] = True


def function_platform(environ: Any = None) -> str | None:
    """The serverless platform this process runs on, by its documented environment
    variables, or ``None``. A Cloud Run *service* (``K_SERVICE`` without
    ``FUNCTION_TARGET``) is not a function: it serves requests, and stops with SIGTERM.
    """
    env = os.environ if environ is None else environ
    if env.get("AWS_LAMBDA_FUNCTION_NAME") or env.get("AWS_EXECUTION_ENV", "").startswith(
        "AWS_Lambda_"
    ):
        return "AWS Lambda"
    if env.get("FUNCTION_TARGET"):
        return "Cloud Run functions" if env.get("K_SERVICE") else "Google Cloud Functions"
    return None


def _serverless_decided() -> bool:
    if _state["serverless_decided"]:
        return True
    platform = function_platform()
    if platform is None or _state["flush_after"]:
        _state["serverless_decided"] = True
        return True
    where = _configured_handler()
    if where is None:
        return False  # its module is still being imported: decide at a later batch
    _state["serverless_decided"] = True
    _diagnostics.say_once(
        "serverless-no-flush-after",
        f"this process runs in {platform}, and its handler {where} is not wrapped by "
        "tinybird_export.serverless.flush_after: the platform freezes the process when the "
        "handler returns, so events still queued then wait for the next invocation, or are "
        "lost with the instance. Decorate the handler with @flush_after: it delivers before "
        "the handler returns, within the invocation's remaining time.",
    )
    return True


def _configured_handler() -> str | None:
    """The function's handler as ``module.name`` once its module has defined it, else
    ``None`` (not imported yet, or a handler setting we cannot read).
    """
    lambda_handler = os.environ.get("_HANDLER", "")
    if lambda_handler:  # "path/to/module.function", as Lambda's Python runtime reads it
        module_name, _, name = lambda_handler.rpartition(".")
        module_name = module_name.replace("/", ".")
    else:  # functions-framework: FUNCTION_TARGET in the FUNCTION_SOURCE file's module
        name = os.environ.get("FUNCTION_TARGET", "")
        source = os.environ.get("FUNCTION_SOURCE", "main.py")
        module_name = os.path.splitext(os.path.basename(source))[0]
    module = sys.modules.get(module_name) if module_name and name else None
    if module is None or not callable(getattr(module, name, None)):
        return None
    return f"{module_name}.{name}"


# -- the same logs stored twice --------------------------------------------------------------


def log_exporter_opened(exporter: object, datasource: str) -> None:
    """A ``TinybirdLogExporter`` for ``datasource`` is open."""
    _log_exporters[exporter] = datasource


def log_exporter_closed(exporter: object) -> None:
    """That exporter was shut down."""
    _log_exporters.pop(exporter, None)


def check_logs_stored_twice() -> None:
    """Say once if a logger's records reach both a ``TinybirdHandler`` and OpenTelemetry's
    ``LoggingHandler`` while a ``TinybirdLogExporter`` is open.
    """
    if not _log_exporters:
        return
    from tinybird_export.handler import TinybirdHandler  # noqa: PLC0415 - it imports us

    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [
        logger
        for logger in list(logging.Logger.manager.loggerDict.values())
        if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        if logger.disabled:
            continue
        reached = _handlers_reached(logger)
        ours = [h for h in reached if isinstance(h, TinybirdHandler)]
        if ours and any(_is_otel_logging_handler(h) for h in reached):
            datasources = ", ".join(sorted({repr(d) for d in list(_log_exporters.values())}))
            _diagnostics.say_once(
                "logs-stored-twice",
                f"records of logger {logger.name!r} reach both {ours[0]!r} and OpenTelemetry's "
                f"LoggingHandler, whose records TinybirdLogExporter sends to {datasources}: "
                "every record is stored twice, in two data sources. Keep one path: remove "
                "the TinybirdHandler (the OpenTelemetry log exporter already sends these "
                "records), or remove the LoggingHandler (under opentelemetry-instrument: "
                "OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED=false, and no "
                "opentelemetry-instrumentation-logging).",
            )
            return


def _handlers_reached(logger: logging.Logger) -> list[logging.Handler]:
    """The handlers a record created at ``logger`` is handed to (``Logger.callHandlers``)."""
    reached: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        reached += current.handlers
        if not current.propagate:
            break
        current = current.parent
    return reached


def _is_otel_logging_handler(handler: logging.Handler) -> bool:
    """OpenTelemetry's ``LoggingHandler`` (the SDK's, or opentelemetry-instrumentation-
    logging's), or a subclass; without importing OpenTelemetry.
    """
    return any(
        cls.__name__ == "LoggingHandler" and cls.__module__.startswith("opentelemetry.")
        for cls in type(handler).__mro__
    )
