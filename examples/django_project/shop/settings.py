"""Settings of the example Django project: TinybirdHandler in LOGGING, token from the env."""

import os

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
ROOT_URLCONF = "shop.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE = [
    "tinybird_export.django.RequestContextMiddleware",
    "django.middleware.common.CommonMiddleware",
]
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

# tinybird_export.django options
TINYBIRD_REQUEST_ID_HEADER = "X-Request-ID"
TINYBIRD_ACCESS_EVENTS = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "tinybird": {
            "class": "tinybird_export.TinybirdHandler",  # token from TINYBIRD_TOKEN
            "datasource": os.environ.get("TINYBIRD_DATASOURCE", "django_logs"),
            "service": "shop",
            "flush_interval": 0.2,
        },
    },
    "root": {"handlers": ["tinybird"], "level": "INFO"},
    "loggers": {"django": {"level": "INFO"}},
}
