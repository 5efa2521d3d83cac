"""The public surface: __all__, typing marker, and the pytest plugin users get."""

from __future__ import annotations
import __future__

import importlib.metadata
import inspect
from pathlib import Path

import tinybird_export
from tinybird_export.testing import EventsServer


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in vars(tinybird_export) if not name.startswith("_")}
    not_api = {
        name
        for name in public
        if inspect.ismodule(getattr(tinybird_export, name))
        or isinstance(getattr(tinybird_export, name), __future__._Feature)
    }
    # Imported on first access.
    lazy = {"TinybirdLogExporter", "TinybirdMetricExporter", "TinybirdSpanExporter"}
    assert set(tinybird_export.__all__) == (public - not_api) | {"__version__"} | lazy
    assert tinybird_export.__all__ == sorted(tinybird_export.__all__)


def test_public_objects_have_docstrings() -> None:
    for name in tinybird_export.__all__:
        obj = getattr(tinybird_export, name)
        if callable(obj):
            assert inspect.getdoc(obj), name


def test_package_is_typed() -> None:
    assert (Path(tinybird_export.__file__).parent / "py.typed").exists()


def test_version_matches_metadata() -> None:
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
