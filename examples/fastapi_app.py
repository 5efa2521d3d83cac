"""A FastAPI app logging to Tinybird through the ASGI middleware, served by uvicorn.

Run it against the embedded local server (one command, from the repository root)::

    .venv/bin/python examples/fastapi_app.py

It starts ``tinybird-export local`` when TINYBIRD_TOKEN is unset, serves the app with
uvicorn's command line, sends it a few requests, stops it with SIGTERM (as Kubernetes does)
and prints what reached the ``fastapi_logs`` data source: every event, although uvicorn dies
by the signal, because the middleware delivers at lifespan shutdown. On its own::

    TINYBIRD_HOST=... TINYBIRD_TOKEN=... uvicorn examples.fastapi_app:app
"""

from __future__ import annotations

import logging
import logging.config
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

# The examples' data sources (examples/datasources): what a workspace needs for them.
EXAMPLE_DATASOURCES = str(Path(__file__).resolve().parent / "datasources")

if __name__ == "__main__" and not os.environ.get("TINYBIRD_TOKEN"):
    # No Tinybird token: start the embedded local server and run this script against it.
    from tinybird_export.local import spawn

    # Strict, as a Forward workspace: the example sends only to data sources it declares.
    with spawn(":memory:", "--strict", "--datasources", EXAMPLE_DATASOURCES) as local:
        run = subprocess.run([sys.executable, __file__], env=local.env(), check=False)
        sys.exit(run.returncode)

# Configured when the module is imported: uvicorn's command line configures its own logging
# first, then imports the app. (uvicorn.run() called from your own code configures it after,
# closing every handler created before: pass log_config=None, or your config, there.)
logging.config.dictConfig(
    {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {
            "tinybird": {
                "class": "tinybird_export.TinybirdHandler",
                "datasource": os.environ.get("TINYBIRD_DATASOURCE", "fastapi_logs"),
                "service": "shop",
            },
        },
        "root": {"handlers": ["tinybird"], "level": "INFO"},
    }
)

from fastapi import FastAPI  # noqa: E402

from tinybird_export.asgi import RequestContextMiddleware  # noqa: E402

log = logging.getLogger("shop")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    log.info("shop starting")
    yield
    log.info("shop stopping")  # delivered too: the middleware flushes after this


app = FastAPI(lifespan=lifespan)
app.add_middleware(RequestContextMiddleware, request_id_header="X-Request-ID", access_events=True)


@app.get("/hello/{name}")
async def hello(name: str) -> dict[str, str]:
    log.info("said hello", extra={"visitor": name})
    return {"hello": name}


@app.get("/report")
def report() -> dict[str, int]:  # a sync endpoint: FastAPI runs it in a thread, same context
    log.info("report built", extra={"rows": 3})
    return {"rows": 3}


def main() -> None:
    """Serve the app with uvicorn, send it requests, SIGTERM it, show what arrived."""
    import urllib3

    from tinybird_export.cli import query

    examples = str(Path(__file__).resolve().parent)
    command = [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--port", "0"]
    with subprocess.Popen(
        command, cwd=examples, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    ) as server:
        assert server.stderr is not None
        url = None
        for line in server.stderr:  # "Uvicorn running on http://127.0.0.1:PORT ..."
            found = re.search(r"running on (http://\S+)", line)
            if found:
                url = found.group(1)
                break
        if url is None:
            sys.exit("uvicorn did not start")
        pool = urllib3.PoolManager(retries=False, timeout=10)
        for name in ("ada", "grace"):
            pool.request("GET", f"{url}/hello/{name}?token=secret", headers={"X-Request-ID": name})
        pool.request("GET", f"{url}/report")
        server.send_signal(signal.SIGTERM)
        server.stderr.read()
        server.wait(30)
    print(f"uvicorn ended with {server.returncode} (-15: it re-raises SIGTERM)")
    host, token = os.environ["TINYBIRD_HOST"], os.environ["TINYBIRD_TOKEN"]
    sql = "select logger, event, href, request_id from fastapi_logs order by timestamp"
    for row in query(host, token, sql)["data"]:  # type: ignore[union-attr]
        print(row)


if __name__ == "__main__":
    main()
