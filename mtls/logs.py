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
import traceback
from typing import Any

from gunicorn import glogging

from mtls import accesslog


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
        if _already_safe(record):
            # The copy below would hold the same values: skip making it
            # (the access log's records, mtls.accesslog, are all like this).
            return self.inner.format(record)
        safe = logging.makeLogRecord(record.__dict__)
        safe.msg, safe.args = log_safe(record.getMessage()), ()
        if record.exc_info and not record.exc_text:
            safe.exc_text = self.inner.formatException(record.exc_info)
        if safe.exc_text:
            safe.exc_text = _lines_safe(safe.exc_text)
        if safe.stack_info:
            safe.stack_info = _lines_safe(safe.stack_info)
        return self.inner.format(safe)


def _already_safe(record: logging.LogRecord) -> bool:
    """A finished, printable message with nothing attached: escaping would change nothing."""
    msg = record.msg
    return (
        not record.args
        and isinstance(msg, str)
        and msg.isprintable()
        and not record.exc_info
        and not record.exc_text
        and not record.stack_info
    )


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

    ``access`` computes only the atoms access_log_format names
    (mtls.accesslog: ~60 us of a keep-alive request otherwise), while the
    access log is gunicorn's own handlers; with a ``logconfig*`` it is
    gunicorn's ``access`` unchanged.
    """

    _access_format: accesslog.AccessFormat | None = None
    # gunicorn's Setting behind cfg.access_log_format: read on every request
    # to see the format changed, without Config.__getattr__'s lookups (~1.5 us).
    _format_setting: Any = None

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        fmt = getattr(cfg, "access_log_format", None)
        self._access_format = None
        settings = getattr(cfg, "settings", None)
        self._format_setting = settings.get("access_log_format") if settings else None
        if (
            isinstance(fmt, str)
            and accesslog.names_every_conversion(fmt)
            and accesslog.fast_path_allowed(cfg, self.access_log)
        ):
            self._access_format = accesslog.AccessFormat(fmt)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if not isinstance(handler.formatter, LogSafeFormatter):
                    handler.setFormatter(LogSafeFormatter(handler.formatter))
        if not any(getattr(cfg, name, None) for name in _OWN_LOG_CONFIG):
            root = logging.getLogger()
            root.handlers = list(self.error_log.handlers)
            root.setLevel(self.loglevel)

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        fmt = self._access_format
        setting = self._format_setting
        current = setting.get() if setting is not None else self.cfg.access_log_format
        if fmt is None or fmt.fmt != current:
            return super().access(resp, req, environ, request_time)  # type: ignore[no-any-return]
        if not self.access_log_enabled:
            return None
        try:
            line = fmt.line(self, resp, req, environ, request_time)
            if not write_plain_line(self.access_log, line):
                accesslog.emit(self.access_log, line)
        except Exception:
            self.error(traceback.format_exc())  # as gunicorn's access does
        return None


def write_plain_line(log: logging.Logger, line: str) -> bool:
    """Write ``line`` as ``log.info(line)`` would, without a LogRecord, where nothing reads one.

    The access log's record cost ~13 us of the ~20 us the shipped access
    log adds to a request (bench/findings.py): LogRecord's constructor (the
    clock, pid, thread and process names), then Logger.handle, the filters,
    callHandlers. When every handler on ``log`` is a plain stream or file
    handler (gunicorn's own: ``-`` or a file) with no filter and a
    LogSafeFormatter around a ``%(message)s`` formatter, what they write is
    exactly ``log_safe(line)`` plus the terminator, so that is written, under
    each handler's lock, flushed as StreamHandler.emit flushes. Anything else
    (a filter anywhere, syslog, a rotating handler, a formatter that shows
    the time or level, propagation, a file handler not yet open) returns
    False: the caller makes the record as before. A write that fails goes to
    the handler's handleError with a record, as emit's would.
    """
    if log.disabled or not log.isEnabledFor(logging.INFO):
        return True  # what log.info would write: nothing
    handlers = log.handlers
    if log.filters or log.propagate or not handlers:
        return False
    for handler in handlers:
        if not _writes_message_only(handler):
            return False
    safe = log_safe(line)
    for handler in handlers:
        stream_handler: Any = handler
        handler.acquire()
        try:
            stream_handler.stream.write(safe + stream_handler.terminator)
            handler.flush()
        except RecursionError:
            raise
        except Exception:
            handler.handleError(log.makeRecord(log.name, logging.INFO, __file__, 0, line, (), None))
        finally:
            handler.release()
    return True


def _writes_message_only(handler: logging.Handler) -> bool:
    """Whether ``handler`` writes each record as its escaped message alone (write_plain_line)."""
    if type(handler) not in _PLAIN_HANDLERS or handler.filters or handler.level > logging.INFO:
        return False
    if getattr(handler, "stream", None) is None:
        return False  # a FileHandler with delay=True opens its file in emit
    formatter = handler.formatter
    if type(formatter) is not LogSafeFormatter:
        return False
    inner = formatter.inner
    return (
        type(inner) is logging.Formatter
        and type(inner._style) is logging.PercentStyle
        and inner._fmt == "%(message)s"
    )


_PLAIN_HANDLERS = (logging.StreamHandler, logging.FileHandler)

#: gunicorn settings with which the operator configures logging themselves.
_OWN_LOG_CONFIG = ("logconfig", "logconfig_dict", "logconfig_json")
