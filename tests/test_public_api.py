"""The public surface: __all__, typing marker, and the pytest plugin users get."""

from __future__ import annotations
import __future__

import importlib.metadata
import inspect
from pathlib import Path

import tinybird_export
from tests.helpers import run_python
from tinybird_export.testing import EventsServer


def test_all_lists_exactly_the_public_names() -> None:
    """__all__ names every public object of the package, sorted; the OpenTelemetry
    exporters (the otel extra) are attributes, imported on first access, not in __all__."""
    public = {name for name in vars(tinybird_export) if not name.startswith("_")}
    not_api = {
        name
        for name in public
        if inspect.ismodule(getattr(tinybird_export, name))
        or isinstance(getattr(tinybird_export, name), __future__._Feature)
    }
    assert set(tinybird_export.__all__) == (public - not_api) | {"__version__"}
    assert tinybird_export.__all__ == sorted(tinybird_export.__all__)
    assert tinybird_export.TinybirdSpanExporter.__module__ == "tinybird_export.otel"
    assert tinybird_export.stats.DeliveryStats is tinybird_export.DeliveryStats


def test_import_star_works_without_the_otel_extra() -> None:
    """`from tinybird_export import *` imports nothing of OpenTelemetry, and works when it
    is not installed; asking for an exporter then says which extra to install."""
    result = run_python("""
        import sys
        sys.modules["opentelemetry"] = None  # what an environment without the extra is like
        before = set(dir())
        from tinybird_export import *
        print(sorted(set(dir()) - before - {"before"}))
        print(any(m.startswith("opentelemetry") and sys.modules[m] for m in sys.modules))
        import tinybird_export
        try:
            tinybird_export.TinybirdSpanExporter
        except ImportError as exc:
            print(exc)
    """)
    assert result.returncode == 0, result.stderr
    names, otel_loaded, error = result.stdout.strip().splitlines()
    assert names == str(sorted(tinybird_export.__all__))
    assert otel_loaded == "False"
    assert "pip install 'tinybird-export[otel]'" in error


def test_public_objects_have_docstrings() -> None:
    """Every public callable is documented."""
    for name in tinybird_export.__all__:
        obj = getattr(tinybird_export, name)
        if callable(obj):
            assert inspect.getdoc(obj), name


def test_package_is_typed() -> None:
    """The package ships py.typed."""
    assert (Path(tinybird_export.__file__).parent / "py.typed").exists()


def test_version_matches_metadata() -> None:
    """__version__ is the installed distribution's version."""
    assert tinybird_export.__version__ == importlib.metadata.version("tinybird-export")


def test_pytest_plugin_fixture(tinybird_server: EventsServer) -> None:
    """The tinybird_server fixture is installed with the package (pytest11 entry point)."""
    handler = tinybird_export.TinybirdHandler(
        datasource="fixture", host=tinybird_server.url, token=tinybird_server.token
    )
    try:
        handler.handle(__import__("logging").makeLogRecord({"msg": "via fixture"}))
        assert handler.flush(10)
        assert tinybird_server.events("fixture")[0]["event"] == "via fixture"
    finally:
        handler.close()
