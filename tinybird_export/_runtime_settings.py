"""The settings of the runtime, resolved once per host and token.

A producer's settings are its own: data source, fields, service, extras, ``before_send``,
``wait``, the queue and batch limits, ``flush_interval``, ``flush_timeout``. The others
belong to the runtime that every producer of one host and token shares (one worker: its
threads, its connection pool, its spool): the timeouts, ``compression``, ``ca_bundle``,
``background``, ``adaptive``, the spool and the exit budget.

When producers of one host and token ask for different runtime values, one rule decides,
and a conflict is said once on stderr:

- ``exit_timeout``, ``connect_timeout`` and ``timeout``: **the longest** holds (a producer
  asking for a short budget still gets its events the longest one's chance);
- every other runtime setting: **the first producer's** value holds.
"""

from __future__ import annotations

import dataclasses
from typing import Final

from tinybird_export import _diagnostics
from tinybird_export._config import TinybirdConfig

LONGEST: Final = ("exit_timeout", "connect_timeout", "timeout")
"""The runtime settings where the longest value of the producers holds."""


@dataclasses.dataclass
class RuntimeSettings:
    """One worker's settings: its first producer's, merged with each later one's
    (``merge``). Mutated only by the process owner, under its lock; read by the worker.
    """

    host: str
    token: str = dataclasses.field(repr=False)
    compression: str = "gzip"
    connect_timeout: float = 3.0
    timeout: float = 10.0
    ca_bundle: str | None = None
    background: bool = True
    adaptive: bool = True
    spool_dir: str | None = None
    spool_max_bytes: int = 1024 * 1024 * 1024
    exit_timeout: float = 5.0

    @classmethod
    def of(cls, config: TinybirdConfig) -> RuntimeSettings:
        """The runtime part of a producer's resolved settings."""
        values = {f.name: getattr(config, f.name) for f in dataclasses.fields(cls)}
        values["token"] = config.token or ""
        return cls(**values)

    def merge(self, config: TinybirdConfig, label: str) -> None:
        """Apply the rule (see the module docstring) to a later producer's settings,
        saying once per setting what holds when it asked for something else.
        """
        for field in dataclasses.fields(self):
            name = field.name
            if name in ("host", "token"):
                continue
            mine, theirs = getattr(self, name), getattr(config, name)
            if mine == theirs:
                continue
            if name in LONGEST and theirs > mine:
                setattr(self, name, theirs)
            held = getattr(self, name)
            rule = "the longest of the producers'" if name in LONGEST else "the first producer's"
            _diagnostics.say_once(
                f"runtime-setting:{self.host}:{name}",
                f"producers sending to {self.host} with one token share one worker, and "
                f"{label} asked for {name}={theirs!r} where another asked for {mine!r}: "
                f"{name}={held!r} holds for all of them ({rule}). Give them the same "
                f"{name} to silence this.",
            )
