"""Secrets out of every log line, whichever library writes it.

python-telegram-bot logs its Bot API URL, token and all, at DEBUG; an exception's
text may hold a URL, a header or a request body; a user may paste a key into a
chat whose messages the libraries log at DEBUG. So every secret the environment
holds (SECRET_NAMES) is replaced by its name in brackets, ``[TELEGRAM_BOT_TOKEN]``,
raw or percent-encoded, in every record:

- where records are made: a log-record factory formats each record's message (its
  arguments, which are otherwise formatted later by whichever handler), traceback
  and stack at once, redacted. That reaches every logger of every library, those
  that do not propagate and those created later included;
- where they are written: a filter on the handlers present at install (the root's
  and those of loggers that do not propagate) redacts the fields a record gets
  after it is made (``extra=``), and records made without the factory;
- what bypasses logging: uncaught exceptions (main thread, other threads) and
  "exception ignored" reports are logged instead of printed, and warnings go
  through logging (``logging.captureWarnings``).

Text Palaver prints itself (start-up errors) goes through ``Redactor.redact``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

from bots.config import SECRET_ENV, Config

# PALAVER_ADMIN_TOKEN guards the operator's HTTP API: a secret from the environment
# like the others, redacted whenever it is set.
SECRET_NAMES = (*SECRET_ENV, "PALAVER_ADMIN_TOKEN")

_log = logging.getLogger("palaver")
_FORMATTER = logging.Formatter()
# Attributes every LogRecord has; any other is an ``extra=`` field.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_SCRUBBED = "palaver_redacted"  # set on records the factory made and scrubbed


def _spellings(secret: str) -> set[str]:
    """The secret as text may carry it: raw, and escaped as JSON or repr() would."""
    return {secret, json.dumps(secret)[1:-1], repr(secret)[1:-1], secret.strip()} - {""}


def _pattern(spelling: str) -> str:
    """``spelling`` with each character also matched percent-encoded (either hex case,
    a space also as ``+``): a URL may encode all of a token, part of it or none."""
    parts = []
    for char in spelling:
        options = [re.escape(char)]
        encoded = "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))
        options.append("".join(f"%(?i:{h[1:]})" for h in re.findall("%..", encoded)))
        if char == " ":
            options.append(r"\+")
        parts.append(f"(?:{'|'.join(options)})")
    return "".join(parts)


class Redactor:
    """Replaces every secret in text and log records by its name, in brackets."""

    def __init__(self, secrets: Mapping[str, str]) -> None:
        self._names: dict[str, str] = {}
        alternatives: list[tuple[int, str, str]] = []
        first = {"%", "+"}
        for index, (name, secret) in enumerate(secrets.items()):
            if not secret.strip():
                continue
            group = f"s{index}"
            self._names[group] = f"[{name}]"
            for spelling in _spellings(secret):
                alternatives.append((len(spelling), group, _pattern(spelling)))
                first.add(spelling[0])
        # Longest first: a secret that contains another is replaced whole.
        alternatives.sort(key=lambda item: -item[0])
        by_group: dict[str, list[str]] = {}
        for _, group, pattern in alternatives:
            by_group.setdefault(group, []).append(pattern)
        # The lookahead turns most positions away with one character-class test.
        starts = "".join(sorted(re.escape(char) for char in first))
        self._regex = (
            re.compile(
                f"(?=[{starts}])(?:"
                + "|".join(f"(?P<{g}>{'|'.join(p)})" for g, p in by_group.items())
                + ")"
            )
            if by_group
            else None
        )

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Redactor:
        """Every secret the environment holds (SECRET_NAMES)."""
        return cls({name: environ[name] for name in SECRET_NAMES if environ.get(name)})

    @classmethod
    def for_config(cls, config: Config, environ: Mapping[str, str] = os.environ) -> Redactor:
        """The secrets ``config`` holds, and those only the environment does."""
        secrets = {name: environ[name] for name in SECRET_NAMES if environ.get(name)}
        for name in SECRET_ENV:
            value = getattr(config.secrets, name.lower())
            if value is not None:
                secrets[name] = value.get_secret_value()
        return cls(secrets)

    def __bool__(self) -> bool:
        return self._regex is not None

    def redact(self, text: str) -> str:
        if self._regex is None:
            return text
        return self._regex.sub(self._name, text)

    def _name(self, match: re.Match[str]) -> str:
        return self._names[match.lastgroup or ""]

    def scrub(self, record: logging.LogRecord) -> None:
        """Format ``record``'s message, traceback and stack now, redacted; redact its
        ``extra=`` fields. Never raises: a logging call must not fail its caller."""
        try:
            message = record.getMessage()
        except Exception as error:  # arguments that do not fit the format
            message = f"{record.msg!s} (unformattable arguments {record.args!r}: {error!r})"
        record.msg, record.args = self.redact(message), None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = record.exc_text or _FORMATTER.formatException(record.exc_info)
        record.exc_info = None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and isinstance(value, str):
                record.__dict__[key] = self.redact(value)

    def filter(self, record: logging.LogRecord) -> bool:
        """As a logging filter on a handler: scrub (the ``extra=`` fields only, when
        the factory did the rest), and let the record through."""
        if record.__dict__.get(_SCRUBBED):
            for key, value in record.__dict__.items():
                if key not in _STANDARD and isinstance(value, str):
                    record.__dict__[key] = self.redact(value)
        else:
            self.scrub(record)
        return True

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Redact every log record, and log what would be printed, until the block
        ends; everything is put back as it was on the way out."""
        if self._regex is None:
            yield
            return
        with contextlib.ExitStack() as undo:
            self._install_factory(undo)
            self._install_filters(undo)
            self._install_hooks(undo)
            logging.captureWarnings(True)
            undo.callback(logging.captureWarnings, False)
            yield

    def _install_factory(self, undo: contextlib.ExitStack) -> None:
        make = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = make(*args, **kwargs)
            self.scrub(record)
            record.__dict__[_SCRUBBED] = True
            return record

        logging.setLogRecordFactory(factory)
        undo.callback(logging.setLogRecordFactory, make)

    def _install_filters(self, undo: contextlib.ExitStack) -> None:
        loggers = [logging.getLogger()] + [
            logger
            for logger in logging.Logger.manager.loggerDict.values()
            if isinstance(logger, logging.Logger) and not logger.propagate
        ]
        for handler in {h for logger in loggers for h in logger.handlers}:
            handler.addFilter(self)
            undo.callback(handler.removeFilter, self)

    def _install_hooks(self, undo: contextlib.ExitStack) -> None:
        excepthook, thread_hook, unraisable_hook = (
            sys.excepthook,
            threading.excepthook,
            sys.unraisablehook,
        )

        def uncaught(
            kind: type[BaseException], value: BaseException, tb: TracebackType | None
        ) -> None:
            _log.critical("uncaught exception", exc_info=(kind, value, tb))

        def uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
            if args.exc_type is SystemExit:
                return
            name = args.thread.name if args.thread is not None else "?"
            exc_info = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
            _log.error("uncaught exception in thread %s", name, exc_info=exc_info)

        def unraisable(report: Any) -> None:
            value = report.exc_value or report.exc_type()
            _log.error(
                "%s: %r",
                report.err_msg or "Exception ignored in",
                report.object,
                exc_info=(report.exc_type, value, report.exc_traceback),
            )

        sys.excepthook = uncaught
        threading.excepthook = uncaught_in_thread
        sys.unraisablehook = unraisable

        def restore() -> None:
            sys.excepthook, threading.excepthook = excepthook, thread_hook
            sys.unraisablehook = unraisable_hook

        undo.callback(restore)
