"""Stream Python logs and events to the Tinybird Events API.

Public API: ``TinybirdHandler`` (a ``logging.Handler``), ``TinybirdEvents`` (an
application's own events), ``TinybirdConfig``, ``DeliveryStats`` (``tinybird_export.stats``),
and the process-wide controls ``flush``, ``shutdown`` and ``install_sigterm_handler``. The
OpenTelemetry exporters live in ``tinybird_export.otel`` (the ``otel`` extra), and the test
server in ``tinybird_export.testing``.
"""

from __future__ import annotations

from importlib import metadata

from tinybird_export._config import TinybirdConfig
from tinybird_export._process import flush, install_sigterm_handler, shutdown
from tinybird_export.events import TinybirdEvents
from tinybird_export.handler import TinybirdHandler
from tinybird_export.stats import DeliveryStats

_OTEL_EXPORTERS = ("TinybirdLogExporter", "TinybirdMetricExporter", "TinybirdSpanExporter")


def __getattr__(name: str) -> object:
    """The OpenTelemetry exporters, imported on first use: ``import tinybird_export`` (and
    ``from tinybird_export import *``) must not import OpenTelemetry (the ``otel`` extra).
    """
    if name in _OTEL_EXPORTERS:
        try:
            from tinybird_export import otel  # noqa: PLC0415
        except ImportError as exc:
            raise ImportError(
                f"tinybird-export: {name} needs OpenTelemetry's SDK: "
                "pip install 'tinybird-export[otel]'"
            ) from exc
        return getattr(otel, name)
    raise AttributeError(f"module 'tinybird_export' has no attribute {name!r}")


try:
    __version__ = metadata.version("tinybird-export")
except metadata.PackageNotFoundError:  # Defensive: running from a source tree
    __version__ = "0"

# The OpenTelemetry exporters are not in __all__: ``import *`` must work without the extra.
__all__ = [
    "DeliveryStats",
    "TinybirdConfig",
    "TinybirdEvents",
    "TinybirdHandler",
    "__version__",
    "flush",
    "install_sigterm_handler",
    "shutdown",
]
