"""Signals that land while the package is at work, in real subprocesses: a handler never
waits for what the frame it interrupted holds, and a signal during the exit drain does not
cut it short."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.helpers import PRELUDE, child_env, run_python
from tinybird_export.testing import EventsServer

# A SIGTERM that lands while the main thread's own flush() lists the spool directory (the
# listing holds a plain lock): the child sends it to itself from inside the listing.
SIGTERM_INSIDE_THE_LISTING = """
            import signal
            from tinybird_export import _spool_disk, _spool_listing
            _spool_listing.LISTING_TTL = -1.0  # every flush lists the directory
            real_listdir, fired = _spool_disk.Disk.listdir, []
            def listdir(self, directory):
                if threading.current_thread() is threading.main_thread() and globals().get("landed") and not fired:
                    fired.append(1)
                    print("inside the listing", flush=True)
                    os.kill(os.getpid(), signal.SIGTERM)  # handled before listdir returns
                return real_listdir(self, directory)
            _spool_disk.Disk.listdir = listdir
"""


class TestSignalInsideThePackage:
    def test_sigterm_during_the_apps_flush_drains_after_it(
        self, server: EventsServer, tmp_path: Path
    ) -> None:
        """install_sigterm_handler() after a framework's hard stop: a SIGTERM inside the
        main thread's flush() (listing the spool) ran the drain in the handler, which waited
        forever for the listing's lock. It now runs once that flush() returns."""
        code = (
            PRELUDE
            + SIGTERM_INSIDE_THE_LISTING
            + """
            import tinybird_export
            handler = TinybirdHandler(spool_dir=SPOOL, exit_timeout=5)
            log.addHandler(handler)
            signal.signal(signal.SIGTERM, lambda s, f: os._exit(7))  # a framework's hard stop
            tinybird_export.install_sigterm_handler()
            for i in range(100):
                log.info("n %d", i)
            landed = True
            handler.flush(5)
            threading.Event().wait(30)
        """.replace("SPOOL", repr(str(tmp_path)))
        )
        result = run_python(code, child_env(server), timeout=30)
        assert result.returncode == 7, result.stderr
        assert "inside the listing" in result.stdout
        assert len(server.events()) == 100

    def test_pool_child_sigterm_during_its_flush_drains_after_it(
        self, server: EventsServer, tmp_path: Path
    ) -> None:
        """A multiprocessing child (SIGTERM left at its default: the package drains, then
        dies by it) flushing when SIGTERM lands: the drain waits for that flush() to
        return, then the child dies by the signal, its events delivered."""
        code = (
            PRELUDE
            + SIGTERM_INSIDE_THE_LISTING
            + """
            import multiprocessing
            def work():
                handler = TinybirdHandler(spool_dir=SPOOL, exit_timeout=5)
                log.addHandler(handler)
                for i in range(100):
                    log.info("n %d", i)
                globals()["landed"] = True
                handler.flush(5)
                threading.Event().wait(30)
            if __name__ == "__main__":
                child = multiprocessing.get_context("fork").Process(target=work)
                child.start()
                child.join(30)
                print("exitcode", child.exitcode, flush=True)
                if child.exitcode is None:
                    child.kill()
        """.replace("SPOOL", repr(str(tmp_path)))
        )
        result = run_python(code, child_env(server), timeout=40)
        assert f"exitcode {-signal.SIGTERM}" in result.stdout, result.stdout + result.stderr
        assert "inside the listing" in result.stdout
        assert len(server.events()) == 100
