"""Run the example Django project against the embedded local server, in one command::

    .venv/bin/python examples/django_project/demo.py

Starts ``tinybird-export local`` when TINYBIRD_TOKEN is unset, serves a few requests through
Django's test client (sync, async and a failing view), and prints what reached
``django_logs``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

# The examples' data sources (examples/datasources): what a workspace needs for them.
EXAMPLE_DATASOURCES = str(Path(__file__).resolve().parent.parent / "datasources")


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
    import django
    from django.test import Client

    from tinybird_export.cli import query

    django.setup()
    client = Client(raise_request_exception=False)
    client.get("/hello/ada?reset_token=secret", headers={"X-Request-ID": "req-ada"})
    client.get("/async/grace")
    client.get("/boom")
    logging.getLogger().handlers[0].flush(10)  # type: ignore[call-arg]
    host, token = os.environ["TINYBIRD_HOST"], os.environ["TINYBIRD_TOKEN"]
    rows = query(host, token, "select logger, event, href, request_id from django_logs")
    for row in rows["data"]:  # type: ignore[union-attr]
        print(row)


if __name__ == "__main__":
    if os.environ.get("TINYBIRD_TOKEN"):
        main()
    else:  # no Tinybird token: run against the embedded local server
        from tinybird_export.local import spawn

        # Strict, as a Forward workspace: it sends only to data sources it declares.
        with spawn(":memory:", "--strict", "--datasources", EXAMPLE_DATASOURCES) as local:
            run = subprocess.run([sys.executable, __file__], env=local.env(), check=False)
            sys.exit(run.returncode)
