"""What reaches our logs: one record, one line, nothing that moves text around.

Peers choose much of what we log: the subject DN of a certificate from a
trusted CA (any holder controls its CN), request paths (percent-decoded by
the time the app sees them), header values. A DN string stays exactly what
mod_ssl prints (``SSL_CLIENT_S_DN``, what policies match), and that keeps
U+0085 NEXT LINE, U+2028/U+2029 LINE/PARAGRAPH SEPARATOR, C1 controls such
as 0x9B (CSI, a terminal escape) and bidi overrides (U+202E) as they are:
in a log line they end the line for ``str.splitlines``, journald and most
log viewers, or reorder it on screen, so a peer could forge a record.

So every record that goes through gunicorn's handlers, the access log, the
error log and every other logger routed to it alike (below), is
escaped once, in the formatter: :class:`MtlsLogger` (``logger_class`` in
gunicorn_conf.py) wraps each handler's formatter in :class:`LogSafeFormatter`.
One home for the rule, whatever format string or handler is configured.

Deliberately NOT done: escaping the backslash. A DN in the log then reads as
policies see it (``CN=Smith\\, John``) and only characters that were not
printable change, but the escaping cannot be undone: the log is for reading;
the exact string is the environ's.
"""

from __future__ import annotations

import logging
from typing import Any

from gunicorn import glogging


def log_safe(text: str) -> str:
    """``text`` with every non-printable character escaped as ``repr()`` escapes it.

    Non-printable is Python's ``str.isprintable()``: Unicode's "Other" (Cc
    controls C0, DEL and C1; Cf format characters such as the bidi controls;
    Cs lone surrogates; Co, Cn) and "Separator" categories (Zl, Zp, and Zs
    except the ASCII space). Each becomes ``\\xNN``, ``\\uNNNN`` or
    ``\\UNNNNNNNN``; newlines and tabs too (one record, one line).
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _lines_safe(text: str) -> str:
    """A traceback or stack keeps its line breaks (it is ours), nothing else."""
    return "\n".join(log_safe(line) for line in text.split("\n"))


class LogSafeFormatter(logging.Formatter):
    """Another formatter, fed a copy of each record whose text is escaped.

    The message (format string and arguments, after ``%`` formatting)
    becomes one line; an exception's traceback and a stack keep their line
    breaks, but every other non-printable character in them is escaped too
    (an exception's message may quote a peer).
    """

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord(record.__dict__)
        safe.msg, safe.args = log_safe(record.getMessage()), ()
        if record.exc_info and not record.exc_text:
            safe.exc_text = self.inner.formatException(record.exc_info)
        if safe.exc_text:
            safe.exc_text = _lines_safe(safe.exc_text)
        if safe.stack_info:
            safe.stack_info = _lines_safe(safe.stack_info)
        return self.inner.format(safe)


class MtlsLogger(glogging.Logger):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn's Logger: every handler escapes what it writes; every logger reaches it.

    ``setup`` runs at start-up and again on each configuration reload (after
    gunicorn has replaced its handlers), so both steps are redone there:
    - each handler of gunicorn's two logs is wrapped in LogSafeFormatter
      (handlers from ``logconfig_dict`` on these two loggers alike);
    - the root logger gets the error log's handlers and ``--log-level``, so
      every other logger, the app's own as much as ``mtls.*``, writes to
      gunicorn's error log in its format at that level, with no list of
      package names to keep. gunicorn's own two loggers do not propagate,
      so nothing is written twice. Not done when a ``logconfig``,
      ``logconfig_dict`` or ``logconfig_json`` is given: that configuration
      is the operator's, root logger included.
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if not isinstance(handler.formatter, LogSafeFormatter):
                    handler.setFormatter(LogSafeFormatter(handler.formatter))
        if not any(getattr(cfg, name, None) for name in _OWN_LOG_CONFIG):
            root = logging.getLogger()
            root.handlers = list(self.error_log.handlers)
            root.setLevel(self.loglevel)


#: gunicorn settings with which the operator configures logging themselves.
_OWN_LOG_CONFIG = ("logconfig", "logconfig_dict", "logconfig_json")
