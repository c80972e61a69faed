"""Keeping secrets out of stored error text and logs.

`redact(text)` masks the values of credentials an exception message or a log line commonly
carries, leaving their names so the text can still be debugged:

* ``Authorization``/``Proxy-Authorization`` headers (``Authorization: Bearer [redacted]``, the
  scheme kept), ``Cookie`` and ``Set-Cookie`` headers (the whole value);
* ``api_key``, ``apikey``, ``token``, ``access_token``, ``refresh_token``, ``password``,
  ``passwd``, ``secret``, ``client_secret`` written ``key=value``, ``key: value`` or as JSON
  ``"key": "value"``;
* bearer tokens anywhere (``Bearer [redacted]``), and the password of a URL
  (``postgresql://user:[redacted]@host``).

`Redactor` adds a user's own patterns or function (``Store(redact=...)``); `RedactingFilter` is the
`logging.Filter` that applies it to log records (their formatted arguments and tracebacks too).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "MASK",
    "RedactOption",
    "RedactingFilter",
    "Redactor",
    "install_log_redaction",
    "log_redactor",
    "redact",
]

MASK = "[redacted]"

# The names of secrets, not secrets.
_SECRET_KEYS = (r"client_secret|access_token|refresh_token|api[_-]?key|apikey|password|passwd"  # noqa: S105
                r"|secret|token")
_HEADER_KEYS = r"proxy-authorization|authorization|set-cookie|cookie"

_JSON_PAIR = re.compile(
    rf"""(?P<q>["'])(?P<key>{_SECRET_KEYS}|{_HEADER_KEYS})(?P=q)(?P<sep>\s*:\s*)"""
    r"""(?P<vq>["'])(?P<value>(?:\\.|(?!(?P=vq)).)*)(?P=vq)""",
    re.IGNORECASE)
_AUTH_HEADER = re.compile(
    r"(?P<key>\b(?:proxy-)?authorization)(?P<sep>\s*[:=]\s*)"
    r"(?:(?P<scheme>bearer|basic|token|digest|negotiate)\s+)?(?P<value>[^\s,;'\"]+)",
    re.IGNORECASE)
_COOKIE_HEADER = re.compile(r"(?P<key>\b(?:set-)?cookie)(?P<sep>\s*:\s*)(?P<value>[^\r\n]+)",
                            re.IGNORECASE)
_PAIR = re.compile(
    rf"(?P<key>(?<![A-Za-z0-9])(?:{_SECRET_KEYS})(?![A-Za-z0-9]))(?P<sep>\s*[=:]\s*)"
    r"(?P<value>(?!\[redacted\])[^\s&,;'\"]+)",
    re.IGNORECASE)
_BEARER = re.compile(r"(?P<scheme>\bbearer)\s+(?P<value>(?!\[redacted\])[A-Za-z0-9\-._~+/]+=*)",
                     re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.\-]*://[^\s:/@]+:)(?P<value>[^\s@/]+)@",
                           re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with the values of credentials masked (see the module docstring)."""
    if not text:
        return text
    text = _JSON_PAIR.sub(lambda m: f"{m['q']}{m['key']}{m['q']}{m['sep']}{m['vq']}{MASK}"
                          f"{m['vq']}", text)
    text = _AUTH_HEADER.sub(
        lambda m: f"{m['key']}{m['sep']}{m['scheme'] + ' ' if m['scheme'] else ''}{MASK}", text)
    text = _COOKIE_HEADER.sub(lambda m: f"{m['key']}{m['sep']}{MASK}", text)
    text = _PAIR.sub(lambda m: f"{m['key']}{m['sep']}{MASK}", text)
    text = _BEARER.sub(lambda m: f"{m['scheme']} {MASK}", text)
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", text)


RedactOption = Callable[[str], str] | Sequence[str | re.Pattern[str]] | None


class Redactor:
    """`redact` plus a user's own rules: regular expressions whose matches are masked (only the
    first group's text when the pattern has groups), or a function applied after the defaults."""

    def __init__(self, extra: RedactOption = None) -> None:
        self._function: Callable[[str], str] | None = None
        self._patterns: list[re.Pattern[str]] = []
        if callable(extra):
            self._function = extra
        elif isinstance(extra, str | re.Pattern):
            self._patterns = [re.compile(extra)]
        elif extra is not None:
            self._patterns = [re.compile(p) for p in extra]

    @property
    def rules(self) -> tuple[object, ...]:
        """What this redactor adds to the defaults (equal rules: the same redaction)."""
        return (self._function, *(p.pattern for p in self._patterns))

    def __call__(self, text: str) -> str:
        text = redact(text)
        for pattern in self._patterns:
            text = pattern.sub(_mask_match, text)
        if self._function is not None:
            text = self._function(text)
        return text


def _mask_match(match: re.Match[str]) -> str:
    if match.re.groups == 0 or match.start(1) < 0:
        return MASK
    whole, start, end = match.group(0), match.start(1) - match.start(), match.end(1) - match.start()
    return whole[:start] + MASK + whole[end:]


class RedactingFilter(logging.Filter):
    """Redacts a log record in place: its message with the arguments formatted in, and the text
    of its exception. Every store of the process adds its rules (`add`)."""

    def __init__(self) -> None:
        super().__init__()
        self._redactors: list[Redactor] = [Redactor()]
        self._lock = threading.Lock()

    def add(self, redactor: Redactor) -> None:
        """Apply `redactor`'s rules too (once, however many stores share them)."""
        with self._lock:
            if redactor.rules not in {r.rules for r in self._redactors}:
                self._redactors.append(redactor)

    def redact(self, text: str) -> str:
        """`text` through every rule."""
        for redactor in list(self._redactors):
            text = redactor(text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to logging to report
            return True
        cleaned = self.redact(message)
        if cleaned != message:  # (else the template and its arguments stay, for grouping)
            record.msg, record.args = cleaned, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


_FILTER = RedactingFilter()
_installed = False
_install_lock = threading.Lock()


def install_log_redaction(redactor: Redactor) -> RedactingFilter:
    """Redact every record of the ``statemachine`` logger hierarchy with `redactor` (and the
    defaults): the filter is attached to the ``statemachine`` logger and each of its descendants
    that exists, and the log-record factory applies it to records of descendants made later (a
    logger's filters do not apply to its children's records). Idempotent; returns the filter."""
    global _installed
    _FILTER.add(redactor)
    with _install_lock:
        for name, logger in list(logging.Logger.manager.loggerDict.items()):
            if _ours(name) and isinstance(logger, logging.Logger) \
                    and _FILTER not in logger.filters:
                logger.addFilter(_FILTER)
        root = logging.getLogger("statemachine")
        if _FILTER not in root.filters:
            root.addFilter(_FILTER)
        if not _installed:
            _installed = True
            previous = logging.getLogRecordFactory()

            def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
                record = previous(*args, **kwargs)
                if _ours(record.name):
                    _FILTER.filter(record)
                return record

            logging.setLogRecordFactory(factory)
    return _FILTER


def log_redactor() -> RedactingFilter:
    """The filter that redacts the ``statemachine`` loggers' records (for formatters that print
    a record's ``extra`` fields, which the filter does not see)."""
    return _FILTER


def _ours(name: str) -> bool:
    return name == "statemachine" or name.startswith("statemachine.")
