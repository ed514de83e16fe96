"""The one error type for a configuration kproxy cannot run with."""

from __future__ import annotations


class ConfigError(Exception):
    """A flag or config-file field with an unusable value.

    ``field`` names what is wrong the way the user wrote it: a flag (``--iptables-sync-period``)
    or a config-file path (``iptables.masqueradeBit``); ``source`` is the config file, if any.
    """

    def __init__(self, field: str, message: str, *, source: str | None = None) -> None:
        self.field = field
        self.message = message
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [f"config {self.source}"] if self.source else []
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)
