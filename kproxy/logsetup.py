"""Logging as kube-proxy users know it: klog's text layout or JSON lines, ``-v`` levels."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import TextIO

from kproxy.config import LoggingFormat

_HANDLER_NAME = "kproxy"
_KLOG_SEVERITY = {logging.CRITICAL: "F", logging.ERROR: "E", logging.WARNING: "W"}


def verbosity_level(verbosity: int) -> int:
    """The logging level of klog's ``V(verbosity)``: V(0) is INFO, each step one lower."""
    return max(1, logging.INFO - verbosity)


def configure_logging(
    logging_format: LoggingFormat, verbosity: int, *, stream: TextIO | None = None
) -> None:
    """Log to stderr in klog's text layout or as JSON lines, showing ``V(verbosity)`` and up.

    Calling it again replaces kproxy's handler instead of adding a second one.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    formatter = JsonLogFormatter() if logging_format is LoggingFormat.JSON else KlogTextFormatter()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME:
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(verbosity_level(verbosity))


class KlogTextFormatter(logging.Formatter):
    """``I0611 14:23:21.104875   12345 module.py:64] message``, as klog lays out its lines."""

    def format(self, record: logging.LogRecord) -> str:
        severity = _severity_letter(record.levelno)
        moment = time.localtime(record.created)
        micros = int(record.created % 1 * 1_000_000)
        header = (
            f"{severity}{time.strftime('%m%d %H:%M:%S', moment)}.{micros:06d} "
            f"{record.process or os.getpid():7d} {record.filename}:{record.lineno}]"
        )
        text = f"{header} {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line with klog's JSON keys: ts, caller, msg, v (and err)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 6),
            "caller": f"{record.filename}:{record.lineno}",
            "msg": record.getMessage(),
            "logger": record.name,
        }
        if record.levelno >= logging.WARNING:
            entry["level"] = logging.getLevelName(record.levelno).lower()
        else:
            entry["v"] = max(0, logging.INFO - record.levelno)
        if record.exc_info:
            entry["err"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _severity_letter(level: int) -> str:
    for threshold, letter in _KLOG_SEVERITY.items():
        if level >= threshold:
            return letter
    return "I"
