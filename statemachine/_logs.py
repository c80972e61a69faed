"""How the command line formats log records: text with structured fields, or one JSON object
per line (`--log-format json`). Standard library only.

Both formats carry the fields a record was given as ``extra`` (the transition log's
``workflow_id``, ``machine``, ``from_state``, ... and ``ctx.log``'s ``workflow_id`` and
``state``), each value passed through the log redaction (`_redact`) like the message itself.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
from datetime import UTC, datetime
from typing import Any, Literal

from ._redact import log_redactor

__all__ = ["JsonFormatter", "LogFormat", "TextFormatter", "configure_logging", "extra_fields",
           "flush_logs"]

LogFormat = Literal["text", "json"]

# The attributes every LogRecord has: anything else on a record came from ``extra``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName"}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record was given as ``extra``, redacted, in the order given."""
    redact = log_redactor().redact
    out: dict[str, Any] = {}
    for key, value in record.__dict__.items():
        if key in _STANDARD or key.startswith("_"):
            continue
        if isinstance(value, str):
            value = redact(value)
        elif not isinstance(value, int | float | bool | type(None)):
            value = redact(str(value))
        out[key] = value
    return out


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: message key=value ...``: the message, then its structured fields."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = extra_fields(record)
        if not fields:
            return text
        pairs = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        head, sep, rest = text.partition("\n")  # fields on the message's line, before a trace
        return f"{head} {pairs}{sep}{rest}"


def _text_value(value: Any) -> str:
    text = "" if value is None else str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' "=\n')) else text


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (ISO 8601, UTC), ``level``, ``logger``,
    ``message``, the ``extra`` fields, and ``exception`` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            out.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = log_redactor().redact(record.exc_text)
        if record.stack_info:
            out["stack"] = log_redactor().redact(record.stack_info)
        return json.dumps(out, default=str)


class _Enqueue(logging.handlers.QueueHandler):
    """Hands records to the writer thread as they are: formatting and writing happen there.

    The standard `QueueHandler` formats in the caller's thread (under its lock) and drops
    ``exc_info``, both for queues that cross processes; this queue stays in the process, so a
    record keeps its traceback for the JSON formatter's ``exception`` field. Only the message is
    merged here, so its arguments are read now, not after the caller changed them."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.msg = record.getMessage()
        record.args = None
        return record


_listener: logging.handlers.QueueListener | None = None


def flush_logs() -> None:
    """Write what is queued, then stop the writer thread (at exit: nothing queued is lost)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


def configure_logging(*, level: int, fmt: LogFormat = "text") -> None:
    """Send log records to stderr in `fmt` at `level` (what the ``statemachine`` command does).
    Like `logging.basicConfig`, it leaves alone a process whose logging someone else set up
    (root handlers it did not add: an application embedding the CLI, a test runner); a second
    call replaces the handler the first one added.

    Records go through a queue to one writer thread: a worker's handler threads log a line per
    transition, and formatting and writing it under the stream handler's lock made them wait
    for each other (at 1,000 handlers in flight, most of a worker's busy time)."""
    global _listener
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "statemachine_cli", False)]
    if root.handlers and not ours:
        return
    for old in ours:
        root.removeHandler(old)
    flush_logs()
    stream = logging.StreamHandler()
    stream.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = _Enqueue(records)
    handler.statemachine_cli = True  # type: ignore[attr-defined]
    _listener = logging.handlers.QueueListener(records, stream)
    _listener.start()
    root.addHandler(handler)
    root.setLevel(level)


atexit.register(flush_logs)
