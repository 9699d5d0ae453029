"""One logging set-up for every entry point.

Every record names its component (``vxlan-manager``, ``ipam``, ``cni``, ``lab``)
and carries the object it is about as key=value fields::

    log = get_logger("ipam")
    log.info("allocated address", vm="db/pg-0", ip="198.19.0.7", pool="default")

On a terminal this prints one readable line; with ``--log-format json`` (or
``VMOVERLAY_LOG_FORMAT=json``) it prints one JSON object per line for log
collectors. Fields are never interpolated into the message, so both forms
stay greppable.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, TextIO

_FIELDS = "vmo_fields"
_COMPONENT = "vmo_component"
LOG_FORMATS = ("auto", "text", "json")


class StructLogger:
    """A thin wrapper over :class:`logging.Logger` taking structured fields."""

    def __init__(self, logger: logging.Logger, component: str, bound: dict[str, Any]):
        self._logger = logger
        self.component = component
        self._bound = bound

    def bind(self, **fields: Any) -> StructLogger:
        """A logger that adds ``fields`` to every line (for example the node name)."""
        return StructLogger(self._logger, self.component, {**self._bound, **fields})

    def _log(self, level: int, msg: str, exc_info: bool, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            extra = {_FIELDS: {**self._bound, **fields}, _COMPONENT: self.component}
            self._logger.log(level, msg, extra=extra, exc_info=exc_info, stacklevel=3)

    def debug(self, msg: str, **fields: Any) -> None:
        self._log(logging.DEBUG, msg, False, fields)

    def info(self, msg: str, **fields: Any) -> None:
        self._log(logging.INFO, msg, False, fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self._log(logging.WARNING, msg, False, fields)

    def error(self, msg: str, *, exc_info: bool = False, **fields: Any) -> None:
        self._log(logging.ERROR, msg, exc_info, fields)

    def exception(self, msg: str, **fields: Any) -> None:
        self._log(logging.ERROR, msg, True, fields)

    def is_debug(self) -> bool:
        return self._logger.isEnabledFor(logging.DEBUG)


def get_logger(component: str, **fields: Any) -> StructLogger:
    return StructLogger(logging.getLogger(f"vmoverlay.{component}"), component, fields)


def _utc(record: logging.LogRecord) -> str:
    t = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _utc(record),
            "level": record.levelname.lower(),
            "component": getattr(record, _COMPONENT, record.name),
            "msg": record.getMessage(),
        }
        for key, value in (getattr(record, _FIELDS, None) or {}).items():
            out[key] = value if isinstance(value, int | float | bool | None) else str(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, _FIELDS, None) or {}
        kv = " ".join(f"{k}={_quote(v)}" for k, v in fields.items())
        comp = getattr(record, _COMPONENT, record.name)
        line = f"{_utc(record)} {record.levelname:<7} {comp:<13} {record.getMessage()}"
        if kv:
            line = f"{line}  {kv}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def _quote(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or " " in text or '"' in text) else text


def setup_logging(
    *,
    level: str | None = None,
    fmt: str | None = None,
    stream: TextIO | None = None,
    logfile: str | None = None,
) -> None:
    """Configure the root logger once per process; later calls replace the handlers.

    ``fmt`` is ``auto`` (text on a terminal, JSON otherwise), ``text`` or ``json``;
    defaults come from ``VMOVERLAY_LOG_FORMAT`` and ``VMOVERLAY_LOG_LEVEL``.
    """
    fmt = (fmt or os.environ.get("VMOVERLAY_LOG_FORMAT") or "auto").lower()
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: use one of {', '.join(LOG_FORMATS)}")
    level_name = (level or os.environ.get("VMOVERLAY_LOG_LEVEL") or "info").upper()
    if level_name not in logging.getLevelNamesMapping():
        raise ValueError(
            f"unknown log level {level_name.lower()!r}: use debug, info, warning or error"
        )
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "text" if stream.isatty() else "json"
    formatter: logging.Formatter = JSONFormatter() if fmt == "json" else TextFormatter()

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    stream_handler = logging.StreamHandler(stream)
    stream_handler.setFormatter(formatter)
    root.addHandler(stream_handler)
    if logfile:
        file_handler = logging.FileHandler(logfile)
        file_handler.setFormatter(JSONFormatter())
        root.addHandler(file_handler)
    root.setLevel(level_name)
    # The Kubernetes client and urllib3 are chatty at debug; keep them at warning
    # unless the operator really asks for their internals.
    for noisy in ("urllib3", "kubernetes", "asyncio", "pyroute2", "scapy.runtime"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def add_logging_args(parser: Any) -> None:
    """Add ``--log-format`` and ``--log-level`` to an argparse parser."""
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=os.environ.get("VMOVERLAY_LOG_FORMAT", "auto"),
        help="text for people, json for log collectors (default: text on a terminal)",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("VMOVERLAY_LOG_LEVEL", "info"),
        choices=("debug", "info", "warning", "error"),
    )
