"""One declaration per setting: its variable, default, parser and meaning in one place.

In the manner of gunicorn's ``config.py``: a settings dataclass declares each
field with ``env(...)``, and ``read_env`` parses them all, collecting every
problem (each naming its variable) and raising once, so a misconfigured
deployment is fixed in one round trip. The parsers here are the only ones:
seconds, whole numbers, choices, paths, password files, DN regexes.

    @dataclass(frozen=True)
    class Settings:
        timeout: float = env("APP_TIMEOUT", seconds(0.1), 10.0, "seconds to wait")

An empty or blank variable counts as unset, except where a declaration says
``blank_is_unset=False`` (DN policies: ``VAR=`` is refused, not defaulted).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from mtls.errors import ConfigError, PolicyError

T = TypeVar("T")
C = TypeVar("C")

#: Parses one variable's raw value; raises Invalid with the problem(s).
Parser = Callable[[str, str], Any]


class Invalid(Exception):
    """A value that cannot be used; each problem is a whole sentence naming the variable."""

    def __init__(self, *problems: str) -> None:
        super().__init__(*problems)
        self.problems = problems


@dataclasses.dataclass(frozen=True)
class Declaration:
    var: str
    parse: Parser
    doc: str
    #: For a required setting: what to point it at, for the "is not set" message.
    example: str = ""
    #: A default given as text, parsed (and so checked) like a set value.
    raw_default: str | None = None
    #: Whether a variable that is set but blank counts as unset. Not for DN
    #: policies: ``VAR=`` there is refused (fail closed), never the default.
    blank_is_unset: bool = True


def env(
    var: str,
    parse: Parser,
    default: Any = dataclasses.MISSING,
    doc: str = "",
    *,
    example: str = "",
    raw_default: str | None = None,
    blank_is_unset: bool = True,
) -> Any:
    """A dataclass field read from ``var``.

    No default (and no ``raw_default``) means the variable is required. A
    ``raw_default`` is parsed like a set value, for defaults that must be
    checked too (a default file that must exist).
    """
    metadata = {"env": Declaration(var, parse, doc, example, raw_default, blank_is_unset)}
    if raw_default is not None:
        return dataclasses.field(default=None, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def declarations(cls: type) -> list[tuple[dataclasses.Field[Any], Declaration]]:
    """The fields of a settings class that come from the environment, with their declarations."""
    return [(f, f.metadata["env"]) for f in dataclasses.fields(cls) if "env" in f.metadata]


def variable_for(settings: object, value: object) -> str | None:
    """The variable whose setting holds ``value`` (a path in an error, say), if any.

    So a message about a file can name the variable that chose it, from the
    declarations alone: no second table of names to keep in step.
    """
    for f, decl in declarations(type(settings)):
        if value is not None and getattr(settings, f.name) == value:
            return decl.var
    return None


def read_env(
    cls: type[C],
    environ: Mapping[str, str],
    *,
    title: str,
    check: Callable[[dict[str, Any], list[str]], None] | None = None,
    **fixed: Any,
) -> C:
    """Build ``cls`` from ``environ``; raise one ConfigError listing every problem.

    ``check`` sees the parsed values (only those that parsed) and may add
    problems that involve several variables. ``fixed`` passes fields that
    do not come from the environment.
    """
    problems: list[str] = []
    values: dict[str, Any] = dict(fixed)
    for f, decl in declarations(cls):
        raw = environ.get(decl.var, "").strip()
        refuse_blank = not raw and decl.var in environ and not decl.blank_is_unset
        if not raw and not refuse_blank:
            if decl.raw_default is not None:
                raw = decl.raw_default
            elif f.default is dataclasses.MISSING:
                problems.append(f"{decl.var} is not set: point it at {decl.example or decl.doc}")
                continue
            else:
                values[f.name] = f.default
                continue
        try:
            values[f.name] = decl.parse(decl.var, raw)
        except Invalid as e:
            problems.extend(e.problems)
    if check is not None:
        check(values, problems)
    if problems:
        raise ConfigError(f"invalid {title} settings:\n  - " + "\n  - ".join(problems))
    return cls(**values)


# -- parsers -------------------------------------------------------------------


def seconds(minimum: float, maximum: float = 3600.0) -> Parser:
    def parse(var: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise Invalid(f"{var}={raw!r} is not a number of seconds") from None
        if not minimum <= value <= maximum:  # also refuses NaN and inf
            raise Invalid(f"{var}={raw!r} must be between {minimum:g} and {maximum:g} seconds")
        return value

    return parse


_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(minimum: float, maximum: float) -> Parser:
    """Seconds (``3600``) or a whole number and a unit (``90s``, ``30m``, ``8h``, ``7d``)."""

    def parse(var: str, raw: str) -> float:
        text = raw.strip()
        unit = _UNIT_SECONDS.get(text[-1:], 0) if text else 0
        number = text[:-1] if unit else text
        if not (number.isascii() and number.isdigit()):
            raise Invalid(
                f"{var}={raw!r} is not a duration: seconds, or a whole number and a unit "
                "s, m, h or d (e.g. 8h, 7d)"
            )
        value = float(int(number) * (unit or 1))
        if not minimum <= value <= maximum:
            raise Invalid(f"{var}={raw!r} must be between {minimum:g} and {maximum:g} seconds")
        return value

    return parse


def whole_number(minimum: int, maximum: int = 1_000_000_000, unit: str = "") -> Parser:
    def parse(var: str, raw: str) -> int:
        if not (raw.isascii() and raw.isdigit()):
            raise Invalid(f"{var}={raw!r} is not a whole number{' of ' + unit if unit else ''}")
        value = int(raw)
        if not minimum <= value <= maximum:
            raise Invalid(f"{var}={raw!r} must be between {minimum} and {maximum}")
        return value

    return parse


def choice(table: Mapping[str, T]) -> Parser:
    """One of ``table``'s keys (an explicit table: no case folding, no guessing)."""

    def parse(var: str, raw: str) -> T:
        if raw not in table:
            raise Invalid(f"{var}={raw!r} is not one of {', '.join(table)}")
        return table[raw]

    return parse


def text(var: str, raw: str) -> str:
    return raw


def path(var: str, raw: str) -> Path:
    return Path(raw)


def dn_regex(var: str, raw: str) -> re.Pattern[str]:
    """A DN policy regex, compiled once here (mtls.policy's rules); matched with fullmatch."""
    from mtls.policy import compile_dn_policy  # policy imports Flask; keep this module light

    try:
        return compile_dn_policy(raw, setting=var)
    except PolicyError as e:
        raise Invalid(str(e)) from None


def password_line(data: bytes) -> bytes:
    """A password file's content is one line; its line ending is not part of the password.

    The one rule for every password file (the client's key, pki's PKCS#12).
    """
    return data.removesuffix(b"\n").removesuffix(b"\r")


def read_password_file(file: Path) -> bytes:
    """A password from a file, never from the environment itself (it leaks into /proc, logs).

    Raises OSError (unreadable) or ValueError (empty).
    """
    password = password_line(file.read_bytes())
    if not password:
        raise ValueError(f"password file {file} is empty; write the password into it")
    return password


def password_file(var: str, raw: str) -> bytes:
    try:
        return read_password_file(Path(raw))
    except OSError as e:
        raise Invalid(f"{var}={raw!r} cannot be read ({e.strerror or e})") from None
    except ValueError as e:
        raise Invalid(f"{var}: {e}") from None
