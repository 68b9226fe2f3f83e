"""How long a certificate lives: ``--valid 30m|24h|90d`` parsed, and lifetimes printed back.

Pure. Short-lived certificates (hours, renewed by a timer) are the answer
to revocation that ghostunnel, step-ca and SPIFFE give, so the unit is a
minute, not a day. The command line refuses less than `MINIMUM`: a
certificate is back-dated by `pki.authority.CLOCK_SKEW` (5 minutes) for
peers whose clock is behind, and one that expires sooner than a renewal
timer can plausibly run is an outage, not a security gain. The library
(`pki.authority`, `pki.lifecycle`) accepts any positive lifetime, so tests
can compress time.
"""

from __future__ import annotations

import datetime
import re

from pki.errors import ValidityError

MINIMUM = datetime.timedelta(minutes=5)
_UNITS = {"m": datetime.timedelta(minutes=1), "h": datetime.timedelta(hours=1)}
_UNITS["d"] = datetime.timedelta(days=1)
_DURATION = re.compile(r"([1-9][0-9]{0,5})([mhd])")


def parse_duration(text: str) -> datetime.timedelta:
    """``30m``, ``24h``, ``90d``: one whole number and one unit, at least `MINIMUM`."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValidityError(
            f"{text!r} is not a duration: write a whole number and a unit, "
            "m (minutes), h (hours) or d (days), e.g. 30m, 24h, 90d"
        )
    lifetime = int(match[1]) * _UNITS[match[2]]
    if lifetime < MINIMUM:
        raise ValidityError(
            f"{text!r} is shorter than the minimum of {format_duration(MINIMUM)}: "
            "certificates are back-dated 5 minutes for clock skew, and one that dies "
            "before a renewal can run is an outage"
        )
    return lifetime


def format_duration(span: datetime.timedelta) -> str:
    """Largest units first, down to minutes: ``89d 23h 59m``; ``0m`` under a minute."""
    minutes = int(span.total_seconds() // 60)
    days, rest = divmod(abs(minutes), 24 * 60)
    hours, mins = divmod(rest, 60)
    parts = [f"{v}{u}" for v, u in ((days, "d"), (hours, "h"), (mins, "m")) if v]
    return ("-" if minutes < 0 else "") + (" ".join(parts) or "0m")


def largest_flag(span: datetime.timedelta) -> str | None:
    """The longest ``--valid`` value that fits in ``span`` (rounded down), or None if none does."""
    if span < MINIMUM:
        return None
    for unit in ("d", "h", "m"):
        count = span // _UNITS[unit]
        if count >= 1:
            return f"{count}{unit}"
    return None  # unreachable: MINIMUM is whole minutes


def time_left(not_after: datetime.datetime, now: datetime.datetime) -> str:
    """``23h 59m`` or ``expired 2h 1m ago``: what `pki list` shows."""
    span = not_after - now
    if span < datetime.timedelta(0):
        return f"expired {format_duration(-span)} ago"
    return format_duration(span)
