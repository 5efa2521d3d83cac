"""Celery: task context on every event logged in a task, and delivery when the worker
stops, with real workers (prefork and solo pools) on kombu's filesystem transport."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import child_env, run_example, run_python
from tinybird_export._context import RequestContext, current_request
from tinybird_export.testing import EventsServer

celery = pytest.importorskip("celery")

CELERY_APP = """
import logging, logging.config, os
from pathlib import Path
from celery import Celery, signals
from celery.utils.log import get_task_logger

DATA = Path(os.environ["CELERY_DATA_DIR"])
app = Celery("celery_tasks", broker="filesystem://", backend=f"file://{DATA / 'results'}")
app.conf.update(
    broker_transport_options={
        "data_folder_in": str(DATA / "queue"),
        "data_folder_out": str(DATA / "queue"),
        "control_folder": str(DATA / "control"),
        "polling_interval": 0.05,
    },
    broker_connection_retry_on_startup=True,
)
if os.environ.get("TASK_CONTEXT") == "1":
    import tinybird_export.celery
    tinybird_export.celery.init_app(app)

if os.environ.get("GOODBYE_RECORDS"):  # connected after init_app: runs after its drain
    @signals.worker_process_shutdown.connect
    def goodbye(**_):
        for i in range(int(os.environ["GOODBYE_RECORDS"])):
            logging.getLogger("shop").info("child ends %d", i)


@signals.setup_logging.connect
def setup_logging(**_):
    # flush_interval 60 s: nothing is sent while the worker runs, so what arrives was
    # delivered when it stopped.
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"tinybird": {
            "class": "tinybird_export.TinybirdHandler", "flush_interval": 60}},
        "root": {"handlers": ["tinybird"], "level": "INFO"},
    })


log = logging.getLogger("shop")


@app.task
def charge(order):
    log.info("charged order", extra={"order": order})
    return order


@app.task
def with_task_logger():
    get_task_logger(__name__).warning("from the task logger")


@app.task
def fails():
    raise ValueError("card declined")
"""

CLIENT = """
import json, sys
sys.path.insert(0, {folder!r})
from celery_tasks import charge, fails, with_task_logger
charges = [charge.delay(order) for order in range({count})]
others = [with_task_logger.delay(), fails.delay()]
assert [r.get(timeout=60) for r in charges] == list(range({count}))
others[0].get(timeout=60)
others[1].get(timeout=60, propagate=False)
print(json.dumps({{"charges": [r.id for r in charges], "logger": others[0].id,
                  "fails": others[1].id}}))
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "celery_tasks.py").write_text(CELERY_APP)
    for folder in ("queue", "control", "results"):
        (tmp_path / folder).mkdir()
    return tmp_path


@pytest.fixture
def worker_env(server: EventsServer, app_dir: Path) -> dict[str, str]:
    return {**child_env(server), "CELERY_DATA_DIR": str(app_dir)}


def run_worker(
    app_dir: Path, env: dict[str, str], pool: str, count: int, *options: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], int]:
    """Start a worker, have a client send tasks and wait for their results, then stop the
    worker with SIGTERM (warm shutdown): what it wrote, the task ids, and its pid.
    """
    command = [sys.executable, "-m", "celery", "-A", "celery_tasks", "worker", "--pool", pool]
    command += ["--concurrency", "2", "--loglevel", "INFO", *options]
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    with subprocess.Popen(
        command,
        cwd=app_dir,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as worker:
        try:
            client = run_python(
                CLIENT.format(folder=str(app_dir), count=count),
                {"CELERY_DATA_DIR": str(app_dir)},
                timeout=60,
            )
        finally:
            worker.send_signal(signal.SIGTERM)
            out, err = worker.communicate(timeout=50)
    assert client.returncode == 0, client.stderr + err
    stopped = subprocess.CompletedProcess(command, worker.returncode, out, err)
    return stopped, json.loads(client.stdout), worker.pid


# A worker starts, runs its tasks and stops in 5-7 s here; a loaded machine may need more.
@pytest.mark.timeout(150)
class TestWorker:
    # prefork: children recycled after 10 tasks (each ends with os._exit mid-run) and the
    # last ones ended by the warm shutdown; solo: the tasks run in the main process.
    @pytest.mark.parametrize(
        ("pool", "options"),
        [("prefork", ["--max-tasks-per-child", "10"]), ("solo", [])],
        ids=["prefork-recycled", "solo"],
    )
    def test_task_events_carry_the_task_and_arrive_when_the_worker_stops(
        self,
        server: EventsServer,
        app_dir: Path,
        worker_env: dict[str, str],
        pool: str,
        options: list[str],
    ) -> None:
        """Each pool's task records carry their task and all arrive at shutdown."""
        env = {**worker_env, "TASK_CONTEXT": "1"}
        stopped, ids, worker_pid = run_worker(app_dir, env, pool, 40, *options)
        assert stopped.returncode == 0, stopped.stderr
        events = server.events()
        charged = [e for e in events if e["event"] == "charged order"]
        assert sorted(e["task_id"] for e in charged) == sorted(ids["charges"])  # each once
        by_id = dict(zip(ids["charges"], range(40)))
        for event in charged:
            assert event["task_name"] == "celery_tasks.charge"
            assert event["order"] == by_id[event["task_id"]]
            assert event["attributes"]["task_id"] == event["task_id"]
            assert event["href"] == "" and event["request_id"] == ""
        processes = {e["process"] for e in charged}
        if pool == "prefork":  # sent by the children themselves, at their os._exit
            assert worker_pid not in processes and len(processes) >= 4  # 40 tasks, 10 each
        else:
            assert processes == {worker_pid}
        (from_logger,) = [e for e in events if e["event"] == "from the task logger"]
        assert from_logger["task_id"] == ids["logger"]
        failure = [e for e in events if "card declined" in e["exception"]]
        assert failure and all(e["task_id"] == ids["fails"] for e in failure)
        assert failure[0]["task_name"] == "celery_tasks.fails"
        # Outside tasks (the worker's own start-up and shutdown lines): no task fields.
        outside = [e for e in events if e["logger"].startswith("celery.worker")]
        assert outside and all("task_id" not in e for e in outside)
        assert len({e["event_id"] for e in events}) == len(events)

    def test_records_a_later_shutdown_receiver_logs_arrive(
        self, server: EventsServer, app_dir: Path, worker_env: dict[str, str]
    ) -> None:
        """A worker_process_shutdown receiver that runs after the integration's drain logs
        30 records in each pool child: all arrive (9 of 60 did)."""
        env = {**worker_env, "TASK_CONTEXT": "1", "GOODBYE_RECORDS": "30"}
        stopped, _, _ = run_worker(app_dir, env, "prefork", 4)
        assert stopped.returncode == 0, stopped.stderr
        goodbyes = [e for e in server.events() if e["event"].startswith("child ends")]
        children = {e["process"] for e in goodbyes}
        assert len(children) == 2, stopped.stderr  # --concurrency 2
        for child in children:
            said = sorted(e["event"] for e in goodbyes if e["process"] == child)
            assert said == sorted(f"child ends {i}" for i in range(30)), stopped.stderr

    def test_without_the_integration_prefork_children_lose_what_they_queued(
        self, server: EventsServer, app_dir: Path, worker_env: dict[str, str]
    ) -> None:
        """billiard's pool children end with os._exit, past atexit and multiprocessing's
        finalizers: the loss init_app() prevents (README), so that the claim is checked.
        """
        stopped, ids, _ = run_worker(app_dir, worker_env, "prefork", 10)
        assert stopped.returncode == 0, stopped.stderr
        assert not [e for e in server.events() if e["event"] == "charged order"]
        assert len(ids["charges"]) == 10


class TestTaskContext:
    @pytest.fixture
    def app(self) -> Iterator[Any]:
        app = celery.Celery("in_process", broker="memory://", backend="cache+memory://")
        yield app
        app.close()

    def test_an_eager_task_inside_a_request_keeps_the_request(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger, app: Any
    ) -> None:
        """An eager task in a request keeps its href and request_id, and the app's."""
        import tinybird_export.celery

        other = celery.Celery("not_integrated", broker="memory://", backend="cache+memory://")
        tinybird_export.celery.init_app(app)
        tinybird_export.celery.init_app(app)  # harmless twice: receivers connected once
        logger.addHandler(make_handler(flush_interval=60))

        @app.task(name="shop.refund")  # type: ignore[untyped-decorator]
        def refund(order: int) -> None:
            logger.info("refunded", extra={"order": order, "task_name": "explicit wins"})

        @other.task(name="other.task")  # type: ignore[untyped-decorator]
        def untracked() -> None:
            logger.info("other app")

        token = current_request.set(RequestContext("https://shop.example/refund", "req-1"))
        try:
            result = refund.apply(args=(7,))
            logger.info("after the task")
            untracked.apply()
        finally:
            current_request.reset(token)
        other.close()
        assert isinstance(logger.handlers[0], tinybird_export.TinybirdHandler)
        assert logger.handlers[0].flush(10)
        refunded, after, untouched = server.events()
        assert refunded["task_id"] == result.id and refunded["order"] == 7
        assert refunded["task_name"] == "explicit wins"  # the record's own extra wins
        assert refunded["attributes"]["task_name"] == "explicit wins"
        assert refunded["href"] == "https://shop.example/refund"
        assert refunded["request_id"] == "req-1"
        assert "task_id" not in after and after["request_id"] == "req-1"  # postrun restored
        assert "task_id" not in untouched  # a task of an app without init_app

    def test_importing_the_package_does_not_import_celery(self) -> None:
        """Importing tinybird_export does not import Celery."""
        result = run_python("""
            import sys
            import tinybird_export
            tinybird_export.TinybirdHandler(datasource="x", token="t", exit_timeout=0).close()
            print([m for m in sys.modules if m.split(".")[0] in ("celery", "kombu", "billiard")])
        """)
        assert result.stdout.strip() == "[]", result.stderr


@pytest.mark.timeout(150)
def test_celery_example_runs_against_the_local_server() -> None:
    """examples/celery_app.py runs as written and every task's record arrives."""
    result = run_example("celery_app.py", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "orders [0, 1, 2, 3, 4] charged; worker exited with 0" in result.stdout
    lines = [line for line in result.stdout.splitlines() if "'charged order'" in line]
    assert len(lines) == 5 and all("(a task sent above)" in line for line in lines), lines
