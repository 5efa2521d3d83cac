"""The README's quickstart: configure logging once, log as usual, read what arrived.

export TINYBIRD_HOST=... TINYBIRD_TOKEN=...   # the lines tinybird-export local prints
.venv/bin/python examples/quickstart.py
"""

import logging.config

from tinybird_export import TinybirdEvents, TinybirdHandler

logging.config.dictConfig(
    {
        "version": 1,
        "disable_existing_loggers": False,  # keep the loggers your libraries already made
        "handlers": {
            # The token and host come from TINYBIRD_TOKEN and TINYBIRD_HOST.
            "tinybird": {"class": "tinybird_export.TinybirdHandler", "datasource": "app_logs"},
            "console": {"class": "logging.StreamHandler"},  # your terminal keeps its lines
        },
        "root": {"handlers": ["console", "tinybird"], "level": "INFO"},
    }
)
log = logging.getLogger("shop")
log.info("checkout", extra={"href": "https://shop.example/cart", "cart_id": 42})
try:
    {}["card"]
except KeyError:
    log.exception("payment failed", extra={"cart_id": 42})

# Your own events (page views, clicks) go through the same pipeline.
with TinybirdEvents(datasource="simple_events") as events:
    events.send({"href": "https://shop.example/", "event": "page_view"})

handler = next(h for h in logging.getLogger().handlers if isinstance(h, TinybirdHandler))
print("acknowledged:", handler.flush(5), handler.stats())
