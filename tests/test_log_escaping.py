"""Log lines cannot be split or reordered through a DN, a path or an exception (mtls.logs).

The same through a real gunicorn, with a certificate whose CN is full of
line breakers, is in test_e2e_hostile_names.py.
"""

from __future__ import annotations

import logging
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtls.logs import LogSafeFormatter, log_safe


@pytest.mark.parametrize(
    ("text", "logged"),
    [
        ("CN=a\u2028b", "CN=a\\u2028b"),
        ("CN=a\u2029b", "CN=a\\u2029b"),
        ("CN=a\x85b\x9bc\x80", "CN=a\\x85b\\x9bc\\x80"),
        ("CN=a\nb\rc\td\x00\x7f", "CN=a\\x0ab\\x0dc\\x09d\\x00\\x7f"),
        ("CN=\u202egnp.exe", "CN=\\u202egnp.exe"),  # bidi override
        ("CN=\u2066x\u2069\u200f\u061c", "CN=\\u2066x\\u2069\\u200f\\u061c"),
        ("CN=a\ud800b", "CN=a\\ud800b"),  # a lone surrogate would break the handler's encode
        ("CN=Zoë,O=Ex\\, Inc", "CN=Zoë,O=Ex\\, Inc"),  # printable text, backslashes: unchanged
    ],
)  # fmt: skip
def test_log_safe_escapes_what_is_not_printable_and_nothing_else(text: str, logged: str) -> None:
    assert log_safe(text) == logged


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_log_safe_output_is_one_printable_line(text: str) -> None:
    safe = log_safe(text)
    assert safe.isprintable()
    assert len(safe.splitlines()) <= 1
    assert log_safe(safe) == safe
    if text.isprintable():
        assert safe == text


def test_formatter_escapes_the_message_and_keeps_a_traceback_readable() -> None:
    formatter = LogSafeFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    try:
        raise ValueError("bad CN=x\u2028y")
    except ValueError:
        record = logging.LogRecord(
            "mtls", logging.WARNING, __file__, 1, "denied %s: %r", ("/p\u2028q", "a"), None
        )
        record.exc_info = sys.exc_info()
    text = formatter.format(record)

    head, *traceback = text.split("\n")
    assert head == "[WARNING] denied /p\\u2028q: 'a'"
    assert traceback[0] == "Traceback (most recent call last):"
    assert traceback[-1] == "ValueError: bad CN=x\\u2028y"
    assert text.isascii()
    assert record.getMessage() == "denied /p\u2028q: 'a'"  # the record itself is untouched


@pytest.mark.parametrize(
    ("msg", "args", "logged"),
    [
        ("finished line, 100%", (), "finished line, 100%"),  # as the access log's records
        ("finished CN=x\u2028y", (), "finished CN=x\\u2028y"),
        ("%s", ("CN=x\u0085y",), "CN=x\\x85y"),
    ],
)
def test_formatter_escapes_records_with_and_without_arguments(
    msg: str, args: tuple[str, ...], logged: str
) -> None:
    formatter = LogSafeFormatter(logging.Formatter("%(message)s"))
    record = logging.LogRecord("gunicorn.access", logging.INFO, __file__, 1, msg, args, None)
    assert formatter.format(record) == logged
