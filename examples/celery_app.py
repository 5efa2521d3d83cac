"""A Celery app whose task events carry ``task_name`` and ``task_id``, with a real worker.

Run it against the embedded local server (one command, from the repository root)::

    .venv/bin/python examples/celery_app.py

It starts ``tinybird-export local`` when TINYBIRD_TOKEN is unset, starts a prefork worker
(2 children) on kombu's filesystem transport (no broker to install), sends it tasks, waits
for their results, stops the worker with SIGTERM (a warm shutdown) and prints what reached
the ``celery_logs`` data source. On its own, with any broker::

    TINYBIRD_HOST=... TINYBIRD_TOKEN=... celery -A celery_app worker
"""

from __future__ import annotations

import contextlib
import logging
import logging.config
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from celery import Celery, signals

import tinybird_export.celery

if __name__ == "__main__" and "CELERY_DATA_DIR" not in os.environ:
    # The demo's own broker folder and, without a Tinybird token, the embedded local
    # server; then this script runs again with both.
    from tinybird_export.local import spawn

    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
        env = {**os.environ, "CELERY_DATA_DIR": folder}
        if not os.environ.get("TINYBIRD_TOKEN"):
            # Strict, as a Forward workspace: it sends only to data sources it declares.
            datasources = str(Path(__file__).resolve().parent / "datasources")
            strict = spawn(":memory:", "--strict", "--datasources", datasources)
            env.update(stack.enter_context(strict).env())
        run = subprocess.run([sys.executable, __file__], env=env, check=False)
        sys.exit(run.returncode)

# The filesystem transport: messages are files in one folder (and kombu's exchange table in
# another), results in a third.
DATA = Path(os.environ.get("CELERY_DATA_DIR") or Path(tempfile.gettempdir()) / "celery-example")
for folder in ("queue", "control", "results"):
    (DATA / folder).mkdir(parents=True, exist_ok=True)

app = Celery("celery_app", broker="filesystem://", backend=f"file://{DATA / 'results'}")
app.conf.update(
    broker_transport_options={
        "data_folder_in": str(DATA / "queue"),
        "data_folder_out": str(DATA / "queue"),
        "control_folder": str(DATA / "control"),
        "polling_interval": 0.1,
    },
    broker_connection_retry_on_startup=True,
)
tinybird_export.celery.init_app(app)


@signals.setup_logging.connect
def setup_logging(**_: Any) -> None:
    """Configure logging here: with a receiver, Celery leaves logging alone (by default it
    replaces the root logger's handlers when the worker starts).
    """
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {
                "tinybird": {
                    "class": "tinybird_export.TinybirdHandler",
                    "datasource": os.environ.get("TINYBIRD_DATASOURCE", "celery_logs"),
                    "service": "shop-worker",
                },
            },
            # The app's own INFO records; Celery's (one per task received and succeeded)
            # only from WARNING up.
            "loggers": {"shop": {"level": "INFO"}},
            "root": {"handlers": ["tinybird"], "level": "WARNING"},
        }
    )


log = logging.getLogger("shop")


@app.task
def charge(order: int) -> int:
    """A task whose log events carry its name and id."""
    log.info("charged order", extra={"order": order})
    return order


def main() -> None:
    """Start a worker, send it tasks, stop it, show what arrived."""
    from tinybird_export.cli import query

    options = ["--pool", "prefork", "--concurrency", "2", "--loglevel", "WARNING"]
    quiet = ["--without-gossip", "--without-mingle", "--without-heartbeat"]  # one worker
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_app", "worker", *options, *quiet],
        cwd=Path(__file__).resolve().parent,
        stdout=subprocess.DEVNULL,  # the worker's banner
    )
    try:
        results = [charge.delay(order) for order in range(5)]
        orders = [result.get(timeout=60) for result in results]
    finally:
        worker.send_signal(signal.SIGTERM)  # warm shutdown: the children finish and drain
        worker.wait(60)
    print(f"orders {orders} charged; worker exited with {worker.returncode}")
    host, token = os.environ["TINYBIRD_HOST"], os.environ["TINYBIRD_TOKEN"]
    sql = "select event, process, attributes from celery_logs where logger = 'shop'"
    ids = {result.id for result in results}
    for row in query(host, token, sql)["data"]:  # type: ignore[union-attr]
        task_name, task_id = row["attributes"]["task_name"], row["attributes"]["task_id"]
        known = "a task sent above" if task_id in ids else "unknown"
        print(f"{row['event']!r} in pid {row['process']}: {task_name} {task_id} ({known})")


if __name__ == "__main__":
    main()
