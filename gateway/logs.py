"""Logging set-up: every record carries the trace and span id of the code that logged it.

``text`` (default) appends `` trace_id=... span_id=...`` to lines logged inside a
span; ``json`` writes one JSON object per line (``ts``, ``level``, ``logger``,
``message``, ``trace_id``, ``span_id``, and ``exception`` when there is one), for
log pipelines that join logs to traces by id.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Literal

from opentelemetry import trace

LogFormat = Literal["text", "json"]

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(trace_suffix)s"
_WORKER_TEXT_FORMAT = (
    "%(asctime)s %(levelname)s [worker %(worker)s] %(name)s: %(message)s%(trace_suffix)s"
)


class TraceContextFilter(logging.Filter):
    """Stamps ``trace_id``, ``span_id`` ("" outside a span) and ``trace_suffix``
    on each record, from the span current in the logging thread or task."""

    def filter(self, record: logging.LogRecord) -> bool:
        span_context = trace.get_current_span().get_span_context()
        trace_id = span_id = suffix = ""
        if span_context.is_valid:
            trace_id = format(span_context.trace_id, "032x")
            span_id = format(span_context.span_id, "016x")
            suffix = f" trace_id={trace_id} span_id={span_id}"
        # LogRecord takes extra attributes by design (formatters read them).
        record.__dict__.update(trace_id=trace_id, span_id=span_id, trace_suffix=suffix)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record; the timestamp is UTC, ISO 8601, in milliseconds."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("trace_id", "span_id", "worker"):
            if value := getattr(record, key, ""):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class WorkerFilter(logging.Filter):
    """Stamps ``worker`` (the worker process's index) on each record."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self._index = str(index)

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__["worker"] = self._index
        return True


def configure_logging(
    level: str, log_format: LogFormat = "text", *, worker: int | None = None
) -> None:
    """Replace the root logger's handlers with one stderr handler in ``log_format``;
    a worker of a multi-worker gateway marks its lines with its index."""
    handler = logging.StreamHandler()
    handler.addFilter(TraceContextFilter())
    text = _TEXT_FORMAT
    if worker is not None:
        handler.addFilter(WorkerFilter(worker))
        text = _WORKER_TEXT_FORMAT
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(text)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
