"""gunicorn's gevent workers with --preload over https: gevent patches ssl after urllib3
imported it, and every TLS handshake recurses. The package says once what to do, drops and
counts instead of retrying a local error forever, and the documented fix delivers."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from tests.helpers import free_port
from tinybird_export.testing import EventsServer

pytest.importorskip("gevent")
trustme = pytest.importorskip("trustme")

APP = """
import logging, os
from tinybird_export import TinybirdHandler
log = logging.getLogger("app"); log.propagate = False; log.setLevel(logging.INFO)
log.addHandler(TinybirdHandler(flush_interval=0.1, ca_bundle=os.environ["CA_BUNDLE"]))

def app(environ, start_response):
    log.warning("request %s", environ["PATH_INFO"])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[EventsServer]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    with EventsServer(tls=context) as server:
        yield server


@pytest.mark.timeout(120)
@pytest.mark.parametrize("patched_first", [False, True], ids=["as is", "patched first"])
def test_gevent_preload_over_https(
    tls_server: EventsServer, tmp_path: Path, patched_first: bool
) -> None:
    """gunicorn gevent workers over https: said once as is, delivered patched first."""
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    # The fix the message gives: patch before anything imports ssl, in gunicorn's config.
    config = tmp_path / "gunicorn.conf.py"
    config.write_text("import gevent.monkey\ngevent.monkey.patch_all()\n" if patched_first else "")
    port = free_port()
    env = {
        **os.environ,
        "TINYBIRD_HOST": tls_server.url,
        "TINYBIRD_TOKEN": tls_server.token or "",
        "TINYBIRD_DATASOURCE": "gevent_logs",
        "CA_BUNDLE": str(tmp_path / "ca.pem"),
    }
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    command = [gunicorn, "-c", str(config), "-k", "gevent", "--preload", "-w", "1"]
    command += ["--graceful-timeout", "10", "-b", f"127.0.0.1:{port}", "--chdir", str(tmp_path)]
    with subprocess.Popen(
        [*command, "app:app"], env=env, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            pool = urllib3.PoolManager(retries=False, timeout=5)
            deadline = time.monotonic() + 30
            while True:  # a polling helper with a deadline: gunicorn is starting up
                try:
                    pool.request("GET", f"http://127.0.0.1:{port}/probe")
                    break
                except urllib3.exceptions.HTTPError:
                    assert time.monotonic() < deadline, "gunicorn did not start"
                    time.sleep(0.1)
            for i in range(5):
                assert pool.request("GET", f"http://127.0.0.1:{port}/r{i}").status == 200
            if patched_first:
                assert tls_server.wait_for(lambda: len(tls_server.events()) >= 6, 20)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
    advice = "gevent.monkey.patch_all() before anything else is imported"
    if patched_first:
        assert len(tls_server.events("gevent_logs")) == 6
        assert advice not in err
    else:
        assert tls_server.request_count == 0  # nothing sent, and no retry loop
        assert err.count(advice) >= 1
        assert "dropped, counted as 'error'" in err
