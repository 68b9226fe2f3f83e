"""mtls.accesslog: the access line from the atoms its format names, equal to gunicorn's own.

Real gunicorn objects: a request parsed by gunicorn's parser, the response
gunicorn's wsgi.create builds on a real socket pair, and gunicorn's Logger
formatting the same format the way its ``access`` does (``SafeAtoms``).
"""

from __future__ import annotations

import datetime
import io
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from gunicorn import glogging
from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.parser import RequestParser

from mtls.accesslog import AccessFormat, atom_names
from mtls.logs import LogSafeFormatter, MtlsLogger, write_plain_line

EVERY_ATOM = (
    '%(h)s %(l)s %(u)s "%(r)s" %(s)s %(m)s %(U)s %(q)s %(H)s %(b)s %(B)s "%(f)s" "%(a)s" '
    "%(T)s %(D)s %(M)s %(L)s %(p)s %(x)s %%(h)s %({x-quote}i)s %({X-QUOTE}I)s %({host}i)s "
    "%({content-type}o)s %({X-Resp}o)s %({missing}o)s %({ssl_client_s_dn}e)s "
    "%({SSL_CLIENT_S_DN}e)s %({Mixed_Case}e)s %({wsgi.url_scheme}e)s %({nope}e)s %({bad}x)s "
    "%({}e)s dn=%({SSL_CLIENT_S_DN}e)s"
)
SHIPPED = (
    '%(h)s:%({REMOTE_PORT}e)s "%(r)s" %(s)s %(b)s %(M)sms '
    'dn="%({SSL_CLIENT_S_DN}e)s" tls=%({SSL_PROTOCOL}e)s resumed=%({SSL_SESSION_RESUMED}e)s'
)
REQUEST = (
    b"GET /users/1?q=%22x%22 HTTP/1.1\r\nHost: localhost\r\n"
    b'User-Agent: ua "quoted"\r\nReferer: http://r/\r\nX-Quote: a"b\r\nX-Quote: last"one\r\n'
    b"Authorization: Basic dXNlcjpwdw==\r\n\r\n"
)


@pytest.fixture
def served() -> Iterator[tuple[Any, Any, dict[str, Any]]]:
    """A parsed request and its sent response, as handle_request has them when it logs."""
    cfg = Config()
    server, client = socket.socketpair()
    with server, client:
        req = next(RequestParser(cfg, iter([REQUEST]), ("127.0.0.1", 4242)))
        resp, environ = wsgi.create(req, server, ("127.0.0.1", 4242), ("127.0.0.1", 8443), cfg)
        environ.update(
            {
                "SSL_CLIENT_S_DN": 'CN=a "b",O=Example',
                "SSL_PROTOCOL": "TLSv1.3",
                "SSL_SESSION_RESUMED": "Initial",
                "Mixed_Case": "mixed",
            }
        )
        resp.start_response("200 OK", [("Content-Type", "application/json"), ("X-Resp", 'r"1')])
        resp.write(b'{"id":1}')
        resp.close()
        yield resp, req, environ


def gunicorn_line(fmt: str, resp: Any, req: Any, environ: Any, took: Any) -> str:
    log = glogging.Logger(Config())
    line: str = fmt % glogging.SafeAtoms(log.atoms(resp, req, environ, took))
    return line


# conversions with flags and widths, '%%' runs before an atom, an atom named twice
# (the mapping path: gunicorn computes it once), a lone literal
SPECS_ONCE = "%(s)5s|%(b)-4s|%%%(h)s|%%%%%(D)d|%(M)03d|%(L)r|%%"
SPECS = SPECS_ONCE + " %(p)s %(p)s"


@pytest.mark.parametrize(
    "fmt", [EVERY_ATOM, SHIPPED, "no atoms at all", Config().access_log_format, SPECS_ONCE, SPECS]
)
def test_the_line_is_gunicorns_own_for_every_atom(
    served: tuple[Any, Any, dict[str, Any]], fmt: str
) -> None:
    resp, req, environ = served
    took = datetime.timedelta(seconds=1, microseconds=234567)
    ours = AccessFormat(fmt).line(glogging.Logger(Config()), resp, req, environ, took)
    assert ours == gunicorn_line(fmt, resp, req, environ, took)
    assert "%(h)s" in ours or fmt != EVERY_ATOM  # the literal %% stays literal


def test_the_shipped_format_is_formatted_from_a_tuple_and_the_same_as_from_atoms(
    served: tuple[Any, Any, dict[str, Any]],
) -> None:
    resp, req, environ = served
    took = datetime.timedelta(microseconds=1500)
    compiled = AccessFormat(SHIPPED)
    assert compiled._positional is not None  # the fast path, not the mapping
    assert compiled.line(None, resp, req, environ, took) == gunicorn_line(
        SHIPPED, resp, req, environ, took
    )
    assert AccessFormat(SPECS_ONCE)._positional is not None
    assert AccessFormat(SPECS)._positional is None  # %(p)s twice: the mapping


# names as Python's % reads them: to the balancing ')', '%' and '(' included
NESTED = ["%(a(b)c)s", "%(h)s %(x%(y)s)s|%(s)s", "%({x(y)}e)s", "%(a(b))s"]


@pytest.mark.parametrize("fmt", NESTED)
def test_a_name_with_parentheses_is_the_name_pythons_percent_reads(
    served: tuple[Any, Any, dict[str, Any]], fmt: str
) -> None:
    resp, req, environ = served
    environ["x(y)"] = "paren"
    took = datetime.timedelta(microseconds=1500)
    ours = AccessFormat(fmt).line(glogging.Logger(Config()), resp, req, environ, took)
    assert ours == gunicorn_line(fmt, resp, req, environ, took)


def test_an_environ_atom_is_only_a_key_gunicorn_lower_cases_to_its_name(
    served: tuple[Any, Any, dict[str, Any]],
) -> None:
    resp, req, environ = served
    environ["SS"] = "upper"  # 'ß'.upper() == 'SS', but gunicorn reads "SS" as {ss}e, not {ß}e
    took = datetime.timedelta()
    fmt = "%({ß}e)s %({ss}e)s"
    ours = AccessFormat(fmt).line(glogging.Logger(Config()), resp, req, environ, took)
    assert ours == gunicorn_line(fmt, resp, req, environ, took) == "- upper"


# the '%' after "%(h)" is that conversion's type (unsupported), not the start of a '%%';
# a conversion cut off after its name: Python looks the name up first
@pytest.mark.parametrize(
    "fmt", ["%(h)s %s", "%(h)s 100%", "%(h)s %d%%", "%(h)%%(s)s", "%(h)s %(s)", "%(s)*"]
)
def test_a_format_with_an_unnamed_conversion_fails_as_gunicorns_does(
    served: tuple[Any, Any, dict[str, Any]], fmt: str
) -> None:
    resp, req, environ = served
    took = datetime.timedelta()
    with pytest.raises((TypeError, ValueError)) as gunicorns:
        gunicorn_line(fmt, resp, req, environ, took)
    with pytest.raises(gunicorns.type):
        AccessFormat(fmt).line(glogging.Logger(Config()), resp, req, environ, took)


def test_the_time_atom_is_gunicorns_format(served: tuple[Any, Any, dict[str, Any]]) -> None:
    resp, req, environ = served
    line = AccessFormat("%(t)s").line(
        glogging.Logger(Config()), resp, req, environ, datetime.timedelta()
    )
    datetime.datetime.strptime(line, "[%d/%b/%Y:%H:%M:%S %z]")


def test_only_the_named_atoms_are_read() -> None:
    assert atom_names(SHIPPED) == (
        "h",
        "{REMOTE_PORT}e",
        "r",
        "s",
        "b",
        "M",
        "{SSL_CLIENT_S_DN}e",
        "{SSL_PROTOCOL}e",
        "{SSL_SESSION_RESUMED}e",
    )
    assert atom_names("%%(h)s %%%(u)s") == ("u",)


def logger_writing_to(stream: io.StringIO, **settings: Any) -> MtlsLogger:
    cfg = Config()
    cfg.set("accesslog", "-")
    cfg.set("access_log_format", SHIPPED)
    for name, value in settings.items():
        cfg.set(name, value)
    log = MtlsLogger(cfg)
    point_at(log, stream)
    return log


def point_at(log: MtlsLogger, stream: io.StringIO) -> None:
    for handler in log.access_log.handlers:
        if getattr(handler, "_gunicorn", False) and isinstance(handler, logging.StreamHandler):
            handler.setStream(stream)


def test_the_logger_writes_the_line_escaped_through_its_handlers(
    served: tuple[Any, Any, dict[str, Any]],
) -> None:
    resp, req, environ = served
    environ["SSL_CLIENT_S_DN"] = "CN=x\u2028forged line"
    stream = io.StringIO()
    log = logger_writing_to(stream)
    log.access(resp, req, environ, datetime.timedelta(microseconds=3000))
    assert stream.getvalue() == (
        '127.0.0.1:4242 "GET /users/1?q=%22x%22 HTTP/1.1" 200 8 3ms '
        'dn="CN=x\\u2028forged line" tls=TLSv1.3 resumed=Initial\n'
    )


def test_a_changed_format_is_gunicorns_path_until_setup_compiles_it(
    served: tuple[Any, Any, dict[str, Any]],
) -> None:
    resp, req, environ = served
    stream = io.StringIO()
    log = logger_writing_to(stream)
    log.cfg.set("access_log_format", "%(m)s %({x-quote}i)s")
    log.access(resp, req, environ, datetime.timedelta())
    log.setup(log.cfg)
    point_at(log, stream)
    log.access(resp, req, environ, datetime.timedelta())
    assert stream.getvalue() == 'GET last\\"one\n' * 2


def test_a_format_with_an_unnamed_conversion_is_logged_by_gunicorns_own_access(
    served: tuple[Any, Any, dict[str, Any]],
) -> None:
    """``"%s" % atoms`` shows the mapping: gunicorn's holds every atom, ours only the named."""
    resp, req, environ = served
    stream = io.StringIO()
    log = logger_writing_to(stream, access_log_format="%s %% %(s)s")
    assert log._access_format is None
    log.access(resp, req, environ, datetime.timedelta())
    line = stream.getvalue()
    assert line.startswith("{'h': '127.0.0.1', 'l': '-',"), line  # ours read "{} % 200"
    assert line.endswith("} % 200\n"), line
    assert "'{ssl_client_s_dn}e': " in line, line


@pytest.fixture
def plain_logger() -> tuple[logging.Logger, logging.StreamHandler[io.StringIO]]:
    """A logger as gunicorn sets up its access log: no propagation, one escaping stream handler."""
    # Not from logging.getLogger: pytest's capture attaches to registered loggers.
    logger = logging.Logger("tests.accesslog.plain-write")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(LogSafeFormatter(logging.Formatter("%(message)s")))
    logger.addHandler(handler)
    return logger, handler


def test_the_plain_write_is_what_the_record_would_have_written(
    plain_logger: tuple[logging.Logger, logging.StreamHandler[io.StringIO]],
) -> None:
    logger, handler = plain_logger
    line = 'dn="CN=x\u2028forged\x9b" tls=TLSv1.3'
    logger.info(line)
    by_record = handler.stream.getvalue()
    assert write_plain_line(logger, line) is True
    assert handler.stream.getvalue() == by_record * 2
    assert by_record == 'dn="CN=x\\u2028forged\\x9b" tls=TLSv1.3\n'


def test_a_filter_or_a_richer_format_gets_the_record_instead(
    plain_logger: tuple[logging.Logger, logging.StreamHandler[io.StringIO]],
) -> None:
    logger, handler = plain_logger
    handler.addFilter(lambda record: True)
    assert write_plain_line(logger, "x") is False
    handler.filters.clear()
    logger.addFilter(lambda record: True)
    assert write_plain_line(logger, "x") is False
    logger.filters.clear()
    handler.setFormatter(LogSafeFormatter(logging.Formatter("%(levelname)s %(message)s")))
    assert write_plain_line(logger, "x") is False
    handler.setFormatter(logging.Formatter("%(message)s"))  # not escaping: not ours to bypass
    assert write_plain_line(logger, "x") is False
    handler.setFormatter(LogSafeFormatter(logging.Formatter("%(message)s")))
    logger.propagate = True
    assert write_plain_line(logger, "x") is False
    logger.propagate = False
    assert handler.stream.getvalue() == ""  # refused means nothing written
    assert write_plain_line(logger, "x") is True
    assert handler.stream.getvalue() == "x\n"


def test_a_failed_write_goes_to_the_handlers_error_handling_with_a_record(
    plain_logger: tuple[logging.Logger, logging.StreamHandler[io.StringIO]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logger, handler = plain_logger
    handler.stream.close()  # write raises ValueError
    handled: list[logging.LogRecord] = []
    monkeypatch.setattr(handler, "handleError", handled.append)
    assert write_plain_line(logger, "the line") is True
    assert [r.getMessage() for r in handled] == ["the line"]


def test_a_disabled_logger_writes_nothing(
    plain_logger: tuple[logging.Logger, logging.StreamHandler[io.StringIO]],
) -> None:
    logger, handler = plain_logger
    logger.setLevel(logging.WARNING)
    assert write_plain_line(logger, "x") is True
    assert handler.stream.getvalue() == ""
