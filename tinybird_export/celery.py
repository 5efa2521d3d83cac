"""Celery integration: task context on every log event, and delivery when a pool child ends.

``tinybird_export.celery.init_app(app)`` after creating the Celery app (in the module the
worker imports, so that it runs in the worker and, through fork, in its pool children).

- **Task context.** Every event logged while a task of ``app`` runs carries ``task_name``
  and ``task_id``, added like the record's extras (top level and under ``attributes``,
  as the ``extras`` setting says; the record's own extras win a clash), set from Celery's
  ``task_prerun`` and cleared at ``task_postrun``. A task run inside a web request
  (``task.apply()``, ``task_always_eager``) keeps that request's ``href`` and
  ``request_id``.
- **Pool children deliver when they end.** A prefork child ends with ``os._exit`` (after
  ``worker_max_tasks_per_child`` tasks, and at the worker's warm shutdown), which skips
  ``atexit`` and, for billiard's pool workers, multiprocessing's finalizers too. Celery
  sends ``worker_process_shutdown`` from the child just before: the exit drain runs there,
  within the exit budget (``exit_timeout``), and reports what it could not send, as at any
  exit. The worker's main process (and the solo and threads pools) exits normally and
  drains at ``atexit``.
"""

from __future__ import annotations

import contextvars
import threading
from typing import Any

from celery import signals

from tinybird_export import _diagnostics, shutdown
from tinybird_export._context import RequestContext, current_request

__all__ = ["init_app"]

_apps: list[Any] = []
# The context each running task replaced, by (task id, thread): prerun and postrun run on
# the same thread (or greenlet), one task at a time per thread.
_tokens: dict[tuple[str, int], contextvars.Token[RequestContext | None]] = {}


def init_app(app: Any) -> None:
    """Put ``task_name`` and ``task_id`` on every event logged inside ``app``'s tasks, and
    deliver what a prefork pool child queued when it ends. Calling it again is harmless.

    Args:
        app: The ``celery.Celery`` application.
    """
    if not any(known is app for known in _apps):
        _apps.append(app)
    # dispatch_uid: connected once however often this is called; weak=False: the
    # receivers are module functions, kept alive by this module anyway.
    signals.task_prerun.connect(_enter_task, weak=False, dispatch_uid=f"{__name__}.prerun")
    signals.task_postrun.connect(_leave_task, weak=False, dispatch_uid=f"{__name__}.postrun")
    signals.worker_process_shutdown.connect(
        _child_ends, weak=False, dispatch_uid=f"{__name__}.child"
    )


def _enter_task(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    try:
        if task is None or not any(known is task.app for known in _apps):
            return
        outer = current_request.get()
        fields = {"task_name": str(task.name), "task_id": str(task_id or "")}
        context = RequestContext(
            outer.href if outer else "", outer.request_id if outer else "", fields
        )
        _tokens[(str(task_id), threading.get_ident())] = current_request.set(context)
    except Exception as exc:  # noqa: BLE001 - a task must run whatever happens here
        _report(exc)


def _leave_task(task_id: str | None = None, **_: Any) -> None:
    try:
        token = _tokens.pop((str(task_id), threading.get_ident()), None)
        if token is None:
            return
        try:
            current_request.reset(token)
        except ValueError:  # set in another context (a pool that switched it): restore
            old = token.old_value
            current_request.set(None if old is contextvars.Token.MISSING else old)
    except Exception as exc:  # noqa: BLE001
        _report(exc)


def _child_ends(**_: Any) -> None:
    """A pool child is about to ``os._exit``: the exit drain, as ``atexit`` would run it."""
    try:
        shutdown()
    except Exception as exc:  # noqa: BLE001 - the child must still exit
        _report(exc)


def _report(exc: Exception) -> None:
    _diagnostics.say_once(
        f"celery:{type(exc).__name__}",
        f"the Celery integration failed ({type(exc).__name__}: {exc}); tasks run on, "
        "without task context in their events.",
    )
