"""A Flask app logging to Tinybird, configured the way Flask's docs say: dictConfig first.

Run it against the embedded local server (one command, from the repository root)::

    .venv/bin/python examples/flask_app.py

It starts ``tinybird-export local`` when TINYBIRD_TOKEN is unset, serves a few requests to
itself, and prints what reached the ``flask_logs`` data source. Under gunicorn::

    TINYBIRD_HOST=... TINYBIRD_TOKEN=... gunicorn -w 2 examples.flask_app:app
"""

from __future__ import annotations

import logging
import logging.config
import os
import subprocess
import sys

# The examples' data sources (examples/datasources): what a workspace needs for them.
EXAMPLE_DATASOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "datasources")

if __name__ == "__main__" and not os.environ.get("TINYBIRD_TOKEN"):
    # No Tinybird token: start the embedded local server and run this script against it.
    from tinybird_export.local import spawn

    # Strict, as a Forward workspace: the example sends only to data sources it declares.
    with spawn(":memory:", "--strict", "--datasources", EXAMPLE_DATASOURCES) as local:
        run = subprocess.run([sys.executable, __file__], env=local.env(), check=False)
        sys.exit(run.returncode)

logging.config.dictConfig(
    {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {
            "tinybird": {
                "class": "tinybird_export.TinybirdHandler",
                "datasource": os.environ.get("TINYBIRD_DATASOURCE", "flask_logs"),
                "flush_interval": 0.2,
            },
        },
        "root": {"handlers": ["tinybird"], "level": "INFO"},
    }
)

from flask import Flask  # noqa: E402 - after dictConfig, as Flask's logging docs show

import tinybird_export.flask  # noqa: E402

app = Flask(__name__)
tinybird_export.flask.init_app(app, request_id_header="X-Request-ID", access_events=True)
log = logging.getLogger("shop")


@app.get("/hello/<name>")
def hello(name: str) -> str:
    log.info("said hello", extra={"visitor": name})
    return f"hello {name}\n"


@app.get("/boom")
def boom() -> str:
    raise RuntimeError("kaboom")


def main() -> None:
    """Serve a few requests through the test client and show what arrived."""
    from tinybird_export.cli import query

    handler = logging.getLogger().handlers[0]
    client = app.test_client()
    for name in ("ada", "grace"):
        client.get(f"/hello/{name}?token=secret", headers={"X-Request-ID": f"req-{name}"})
    handler.flush(10)  # type: ignore[call-arg]
    host, token = os.environ["TINYBIRD_HOST"], os.environ["TINYBIRD_TOKEN"]
    rows = query(host, token, "select logger, event, href, request_id from flask_logs")
    for row in rows["data"]:  # type: ignore[union-attr]
        print(row)


if __name__ == "__main__":
    main()
