"""Serverless functions (AWS Lambda, Google Cloud Run functions and Cloud Functions): deliver
before the handler returns.

The platform freezes the process once the handler has returned (Lambda: "Lambda freezes the
execution environment" between invocations, docs.aws.amazon.com/lambda/latest/dg/
lambda-runtime-environment.html; Cloud Run: with request-based billing "the instance's access
to CPU will be disabled or severely limited" after the response, docs.cloud.google.com/run/
docs/tips/general), so the sender thread gets no time then: events queued late in an
invocation wait for the next one, or are lost with the instance::

    from tinybird_export.serverless import flush_after

    @flush_after
    def handler(event, context):
        log.info("order placed")
        return {"statusCode": 200}

``flush_after`` delivers what every producer of the process queued (the process-wide
``tinybird_export.flush``) after the handler returns or raises, before the platform hears of
it; sync and ``async def`` handlers, with ``@flush_after`` or ``@flush_after(timeout=2)``.
"""

from __future__ import annotations

import functools
import inspect
import math
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar, overload

from tinybird_export import _diagnostics, _runtime_checks
from tinybird_export._async import run_blocking
from tinybird_export._config import Kind, TinybirdConfig
from tinybird_export._process import PROCESS, flush

__all__ = ["flush_after"]

F = TypeVar("F", bound=Callable[..., Any])

MARGIN: Final = 0.5
"""Seconds of the invocation's remaining time kept for after the flush: writing what is left
to the spool, and returning the response. Lambda's context reports the remaining time
(``get_remaining_time_in_millis``, docs.aws.amazon.com/lambda/latest/dg/python-context.html).
"""

_TIMEOUT_KIND: Final = Kind("flush_after", frozenset({"flush_timeout"}))


@overload
def flush_after(handler: F, /) -> F: ...


@overload
def flush_after(handler: None = None, /, *, timeout: float | None = None) -> Callable[[F], F]: ...


def flush_after(handler: Any = None, /, *, timeout: float | None = None) -> Any:
    """Wrap a serverless handler so that what it logged is delivered before it returns.

    After the handler returns (or raises), everything queued in the process is sent within
    ``timeout``, and never past the invocation's deadline when the platform passes a context
    that tells it (Lambda's ``context.get_remaining_time_in_millis()``, less half a second).
    What is not delivered in time goes to the spool when ``spool_dir`` is set (in Lambda,
    under ``/tmp``) and is sent at the next invocation; else it stays queued for the next
    invocation (lost if the platform recycles the instance first), and the count is said on
    stderr, once until an invocation delivers everything again. The wrapper never raises an
    error of its own into the handler's caller.

    Args:
        handler: The function (``def`` or ``async def``); given when used as ``@flush_after``.
        timeout: Seconds to wait at most; default ``flush_timeout`` (``TINYBIRD_FLUSH_TIMEOUT``,
            5 s).

    Returns:
        The wrapped handler (a plain function: Google's functions-framework requires one),
        or a decorator when called with options only.

    Raises:
        ValueError: ``timeout`` (or ``TINYBIRD_FLUSH_TIMEOUT``) is not a number >= 0; the
            message names the setting.
    """
    config = TinybirdConfig.resolve(
        {"flush_timeout": timeout}, kind=_TIMEOUT_KIND, default_datasource=lambda _: "unused"
    )
    seconds = config.flush_timeout

    def decorate(function: F) -> F:
        _runtime_checks.flush_after_used()
        name = getattr(function, "__qualname__", None) or type(function).__name__
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await function(*args, **kwargs)
                finally:
                    bound = _bound(seconds, args, kwargs)
                    await run_blocking(lambda: _deliver(name, bound))

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            finally:
                _deliver(name, _bound(seconds, args, kwargs))

        return wrapper  # type: ignore[return-value]

    return decorate if handler is None else decorate(handler)


def _bound(seconds: float, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float:
    """``seconds``, capped by the invocation's remaining time less ``MARGIN`` when one of
    the arguments is a context that tells it (Lambda's, the second argument).
    """
    for value in (*args, *kwargs.values()):
        remaining = getattr(value, "get_remaining_time_in_millis", None)
        if not callable(remaining):
            continue
        try:
            left = float(remaining()) / 1000
        except Exception:  # noqa: BLE001, S112 - an odd context must not fail the invocation
            continue
        if math.isfinite(left):
            return max(0.0, min(seconds, left - MARGIN))
    return seconds


def _deliver(name: str, bound: float) -> None:
    """Flush within ``bound``; spool or report what is left."""
    try:
        started = time.monotonic()
        if flush(bound):
            _diagnostics.forget("serverless-undelivered")
            return
        spooled = PROCESS.spill_queued()
        left = PROCESS.undelivered()
        if not (spooled or left):
            return  # dropped, not late: the core counted and said it
        elapsed = time.monotonic() - started
        parts = [f"{spooled} were spooled (sent at the next invocation)"] if spooled else []
        if left:
            parts.append(
                f"{left} stay queued for the next invocation (lost if the platform recycles "
                "the instance first; set spool_dir under /tmp to keep them on disk)"
            )
        _diagnostics.say_once(
            "serverless-undelivered",
            f"{spooled + left} event(s) were not delivered before {name} returned (waited "
            f"{elapsed:.2f} s of {bound:.2f} s): {'; '.join(parts)}. Said again once an "
            "invocation has delivered everything.",
        )
    except Exception as exc:  # noqa: BLE001 - the handler's result must reach the platform
        _diagnostics.say_once(
            "serverless-error",
            f"flush_after could not deliver ({type(exc).__name__}: {exc}); what is queued "
            "is sent at the next invocation.",
        )
