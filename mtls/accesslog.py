"""The access log line, computed from the atoms its format names and nothing else.

gunicorn's ``Logger.access`` builds a dict of every atom it knows before
formatting: every request header, every response header and every environ
key, lower-cased and quote-escaped. Our worker puts some thirty mod_ssl keys
in the environ (the PEM certificate among them), so that dict cost about
60 us of a ~290 us keep-alive request (bench/RESULTS.md). Here the format
is read once (per configuration: ``MtlsLogger.setup`` recompiles it) into
the list of atoms it uses, and each request computes those alone, with
gunicorn's rules for each (``glogging.Logger.atoms`` and ``SafeAtoms``,
gunicorn 27): ``"`` in a string value becomes ``\\"``, an unknown atom is
``-``, ``{name}i/o/e`` atoms are case-insensitive. tests/test_accesslog.py
holds the two outputs side by side for every atom.

Deliberately different, and only where nothing is visible in the line:
- the record's ``msg`` is the finished line and its ``args`` empty (gunicorn
  passes the format and the atoms); a handler of ours formats only
  ``%(message)s``, and the fast path is used only while every handler on
  ``gunicorn.access`` is one gunicorn set up (``fast_path_allowed``), never
  with a ``logconfig*`` of the operator's, whose formatters may read ``args``;
- the record is made without ``Logger.findCaller`` (its pathname/lineno would
  name gunicorn's glogging.py, which no access format shows), and not made
  at all while every handler writes the escaped message alone
  (``mtls.logs.write_plain_line``: the same bytes, ~10 us less).
The line still goes through the handlers' LogSafeFormatter (mtls.logs), so
escaping is unchanged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

_SIMPLE = "hlutrsmUqHbBfaTDMLp"

Getter = Callable[[Any, Any, Any, Mapping[str, Any], Any], Any]


class Conversion(NamedTuple):
    """One ``%`` conversion of a format, as Python's ``str % args`` reads it."""

    start: int  # the '%'
    key_end: int  # just after the ')' closing the name (start + 1 if unnamed)
    name: str | None  # None: an unnamed conversion ("%s")
    one_value: bool  # formats one value: no '*' width or precision, a known type


def conversions(fmt: str) -> tuple[Conversion, ...]:
    """The conversions of ``fmt``, read as CPython's ``PyUnicode_Format`` reads them.

    One home for what a format names, so the names are Python's own: a name
    runs to the ``)`` that balances its ``(`` (``%(a(b)c)s`` names
    ``a(b)c``), ``%%`` is a literal only straight after a ``%``, and the
    flags, width, precision and length after a name are skipped, so the
    ``%`` that ends ``%(a)%`` is that conversion's type, not a literal.
    An incomplete name or conversion, which Python rejects whatever the
    values, ends the tuple as a conversion of no one value (named if its
    name was complete: Python looks that up before it finds the rest
    missing): a format holding one is formatted from the mapping, and
    raises there as gunicorn's does.
    """
    found: list[Conversion] = []
    end = len(fmt)
    i = fmt.find("%")
    while i != -1:
        start, i = i, i + 1
        if i < end and fmt[i] == "%":
            i = fmt.find("%", i + 1)
            continue
        name = None
        if i < end and fmt[i] == "(":
            depth, j = 1, i + 1
            while j < end and depth:
                depth += _PAREN.get(fmt[j], 0)
                j += 1
            if depth:
                break
            name, i = fmt[i + 1 : j - 1], j
        key_end = i
        while i < end and fmt[i] in "-+ #0":
            i += 1
        star = i < end and fmt[i] == "*"
        i = i + 1 if star else _digits(fmt, i)
        if i < end and fmt[i] == ".":
            i += 1
            if i < end and fmt[i] == "*":
                star, i = True, i + 1
            else:
                i = _digits(fmt, i)
        if i < end and fmt[i] in "hlL":
            i += 1
        if i >= end:
            break
        found.append(Conversion(start, key_end, name, not star and fmt[i] in "diouxXeEfFgGcrsa"))
        i = fmt.find("%", i + 1)
    else:
        return tuple(found)
    return (*found, Conversion(start, end, name, False))  # Python looks a whole name up first


_PAREN = {"(": 1, ")": -1}


def _digits(fmt: str, i: int) -> int:
    """Just after the ASCII digits from ``i`` (CPython reads widths as '0'-'9' only)."""
    while i < len(fmt) and "0" <= fmt[i] <= "9":
        i += 1
    return i


def names_every_conversion(fmt: str) -> bool:
    """Whether each conversion of ``fmt`` names an atom.

    An unnamed one (``"%s"``) formats the mapping itself: in gunicorn's
    line that is every atom it knows, the whole environ with them, which
    only gunicorn's own ``access`` reproduces, so MtlsLogger leaves such a
    format to it.
    """
    return all(c.name is not None for c in conversions(fmt))


def atom_names(fmt: str) -> tuple[str, ...]:
    """The atoms ``fmt`` names, each once, in order of first use."""
    return tuple(dict.fromkeys(c.name for c in conversions(fmt) if c.name is not None))


class AccessFormat:
    """One access_log_format, compiled: a getter per atom it names.

    Where every conversion of the format names its atom, the format is also
    rewritten with positional conversions (``%(s)s`` -> ``%s``, one per use,
    in order) and formatted from a tuple: the same conversions on the same
    values, without building and looking up a dict (1.9 -> 0.7 us in a loop,
    for the shipped format). A format with an unnamed conversion keeps the
    mapping, so it fails as gunicorn's does, and so does a format naming an
    atom twice (gunicorn computes it once: ``%(t)s`` twice shows one time).
    """

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self._getters = tuple((name, _getter(name)) for name in atom_names(fmt))
        found = conversions(fmt)
        self._positional: str | None = None
        if (
            found
            and all(c.name is not None and c.one_value for c in found)
            and len(found) == len(self._getters)  # each atom once
        ):
            # Each atom once, so the conversions name them in _getters' order
            # (atom_names: order of first use): the same values fill the tuple.
            # "%%%(s)5d" -> "%%%5d": the "(s)" of each conversion goes, the rest stays
            pieces, done = [], 0
            for c in found:
                pieces += [fmt[done : c.start + 1]]
                done = c.key_end
            self._positional = "".join(pieces) + fmt[done:]

    def line(self, log: Any, resp: Any, req: Any, environ: Mapping[str, Any], took: Any) -> str:
        """The line gunicorn would log: ``fmt % SafeAtoms(atoms(...))``, for these atoms only."""
        values = []
        for _, get in self._getters:
            value = get(log, resp, req, environ, took)
            values.append(value.replace('"', '\\"') if isinstance(value, str) else value)
        if self._positional is not None:
            return self._positional % tuple(values)
        names = (name for name, _ in self._getters)
        return self.fmt % dict(zip(names, values, strict=True))


def _getter(name: str) -> Getter:
    if name.startswith("{"):
        return _braced(name)
    if len(name) == 1 and name in _SIMPLE:
        return _SIMPLE_GETTERS[name]
    return _dash


def _dash(log: Any, resp: Any, req: Any, environ: Mapping[str, Any], took: Any) -> str:
    return "-"


def _braced(name: str) -> Getter:
    """``{header}i``, ``{header}o``, ``{key}e``; anything else is unknown, hence ``-``."""
    lowered = name.lower()
    if len(lowered) < 3 or not lowered.endswith(("}i", "}o", "}e")):
        return _dash
    key, kind = lowered[1:-2], lowered[-1]
    if kind == "e":
        # only spellings gunicorn lower-cases to key: 'ß'.upper() is 'SS', which it reads as 'ss'
        spellings = tuple(
            s for s in dict.fromkeys((key.upper(), key, name[1:-2])) if s.lower() == key
        )
        if not spellings:
            return lambda log, resp, req, env, took: _environ_value(env, (), key)
        upper = spellings[0]

        def environ_atom(log: Any, resp: Any, req: Any, env: Mapping[str, Any], took: Any) -> Any:
            # the upper-case spelling (every CGI and mod_ssl key) in one lookup, as a rule
            value = env.get(upper, _MISSING)
            return value if value is not _MISSING else _environ_value(env, spellings, key)

        return environ_atom
    if kind == "i":
        return lambda log, resp, req, environ, took: _header(_request_headers(req), key)
    return lambda log, resp, req, environ, took: _header(resp.headers, key)


def _environ_value(environ: Mapping[str, Any], spellings: tuple[str, ...], key: str) -> Any:
    """The environ value whose lower-cased key is ``key`` (gunicorn lower-cases them all).

    The exact spellings first (upper case, as every CGI and mod_ssl key is;
    lower case; as written in the format), then a scan. Differs from
    gunicorn only for an environ holding two keys that differ by case
    alone, where gunicorn keeps whichever comes last: not worth a scan of
    every key on every request.
    """
    for spelling in spellings:
        value = environ.get(spelling, _MISSING)
        if value is not _MISSING:
            return value
    found: Any = "-"
    for other, value in environ.items():
        if other.lower() == key:
            found = value
    return found


_MISSING = object()


def _request_headers(req: Any) -> Any:
    headers = req.headers if hasattr(req, "headers") else req
    return headers.items() if hasattr(headers, "items") else headers


def _header(headers: Any, key: str) -> Any:
    """The last header named ``key`` (case-insensitive), as gunicorn's dict keeps it, or ``-``."""
    found: Any = "-"
    for name, value in headers.items() if hasattr(headers, "items") else headers:
        if name.lower() == key:
            found = value
    return found


def _status(resp: Any) -> Any:
    status = resp.status
    return status.split(None, 1)[0] if isinstance(status, str) else status


def _sent(resp: Any) -> Any:
    return getattr(resp, "sent", None)


_SIMPLE_GETTERS: dict[str, Getter] = {
    "h": lambda log, resp, req, env, took: env.get("REMOTE_ADDR", "-"),
    "l": _dash,
    "u": lambda log, resp, req, env, took: log._get_user(env) or "-",
    "t": lambda log, resp, req, env, took: log.now(),
    "r": lambda log, resp, req, env, took: (
        f"{env['REQUEST_METHOD']} {env['RAW_URI']} {env['SERVER_PROTOCOL']}"
    ),
    "s": lambda log, resp, req, env, took: _status(resp),
    "m": lambda log, resp, req, env, took: env.get("REQUEST_METHOD"),
    "U": lambda log, resp, req, env, took: env.get("PATH_INFO"),
    "q": lambda log, resp, req, env, took: env.get("QUERY_STRING"),
    "H": lambda log, resp, req, env, took: env.get("SERVER_PROTOCOL"),
    "b": lambda log, resp, req, env, took: (_sent(resp) is not None and str(resp.sent)) or "-",
    "B": lambda log, resp, req, env, took: _sent(resp),
    "f": lambda log, resp, req, env, took: env.get("HTTP_REFERER", "-"),
    "a": lambda log, resp, req, env, took: env.get("HTTP_USER_AGENT", "-"),
    "T": lambda log, resp, req, env, took: took.seconds,
    "D": lambda log, resp, req, env, took: took.seconds * 1000000 + took.microseconds,
    "M": lambda log, resp, req, env, took: took.seconds * 1000 + int(took.microseconds / 1000),
    "L": lambda log, resp, req, env, took: f"{took.seconds:d}.{took.microseconds:06d}",
    "p": lambda log, resp, req, env, took: f"<{os.getpid()}>",
}


def fast_path_allowed(cfg: Any, access_log: logging.Logger) -> bool:
    """Whether the access log is gunicorn's own handlers only (module docstring)."""
    if any(getattr(cfg, name, None) for name in ("logconfig", "logconfig_dict", "logconfig_json")):
        return False
    return all(getattr(handler, "_gunicorn", False) for handler in access_log.handlers)


def emit(access_log: logging.Logger, line: str) -> None:
    """``access_log.info(line)`` without the caller lookup (module docstring)."""
    if access_log.disabled or not access_log.isEnabledFor(logging.INFO):
        return
    record = access_log.makeRecord(
        access_log.name, logging.INFO, __file__, 0, line, (), None, "access"
    )
    access_log.handle(record)
