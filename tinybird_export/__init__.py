"""Stream Python logs and events to the Tinybird Events API.

Public API: ``TinybirdHandler`` (a ``logging.Handler``), ``TinybirdEvents`` (an
application's own events), ``TinybirdConfig`` and ``DeliveryStats``, and
``install_sigterm_handler``. The test server lives in ``tinybird_export.testing``.
"""

from __future__ import annotations

from importlib import metadata

from tinybird_export._config import TinybirdConfig
from tinybird_export._exit import install_sigterm_handler
from tinybird_export.events import TinybirdEvents
from tinybird_export.handler import TinybirdHandler
from tinybird_export.stats import DeliveryStats


def __getattr__(name: str) -> object:
    """The OpenTelemetry exporters, imported on first use: ``import tinybird_export`` (and
    the handler) must not import OpenTelemetry (it needs the ``otel`` extra).
    """
    if name in ("TinybirdLogExporter", "TinybirdSpanExporter"):
        from tinybird_export import otel  # noqa: PLC0415

        return getattr(otel, name)
    raise AttributeError(f"module 'tinybird_export' has no attribute {name!r}")


try:
    __version__ = metadata.version("tinybird-export")
except metadata.PackageNotFoundError:  # Defensive: running from a source tree
    __version__ = "0"

__all__ = [
    "DeliveryStats",
    "TinybirdConfig",
    "TinybirdEvents",
    "TinybirdHandler",
    "TinybirdLogExporter",
    "TinybirdSpanExporter",
    "__version__",
    "install_sigterm_handler",
]
