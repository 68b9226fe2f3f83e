"""`pki list`: what the CA issued, when each certificate expires, and which are revoked.

Pure: rows come from the index (`pki.index`), the clock is a parameter.
The JSON form is an interface (scripts and monitoring read it), so its keys
are fixed and documented in `pki list --help`; new keys may be added, none
renamed or removed.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from mtls.identity import format_serial
from pki.index import Entry, Index
from pki.lifetime import time_left

#: Documented in `pki list --help`; keep the two in step.
JSON_KEYS = ("name", "serial", "subject", "not_after", "seconds_left", "time_left", "revoked")

#: The ``--json`` section of the command's help: every key, documented once.
JSON_HELP = """\
--json prints {"certificates": [...]}, one object per certificate in the index
by name then issue date: name, serial (as SSL_CLIENT_M_SERIAL spells it),
subject, not_after (ISO 8601, UTC), seconds_left (negative once expired),
time_left (as the table shows it), revoked (null, or {"at": ..., "reason": ...})."""


def rows(index: Index, now: datetime.datetime) -> list[dict[str, Any]]:
    """One dict per certificate, by name then issue date: the JSON objects of `pki list --json`."""
    entries = sorted(index.entries, key=lambda e: (e.name, e.issued))
    return [_row(e, now) for e in entries]


def render_json(index: Index, now: datetime.datetime) -> str:
    return json.dumps({"certificates": rows(index, now)}, indent=2)


def render_text(index: Index, now: datetime.datetime, *, source: str) -> list[str]:
    table = rows(index, now)
    if not table:
        return [f"{source}: no certificates issued yet (`pki issue NAME --dir DIR` makes one)"]
    header = ("NAME", "SERIAL", "NOT AFTER (UTC)", "LEFT", "REVOKED", "SUBJECT")
    lines = [
        (
            r["name"],
            r["serial"],
            r["not_after"].replace("T", " ").removesuffix("+00:00"),
            r["time_left"],
            "-" if r["revoked"] is None else f"{r['revoked']['at'][:10]} {r['revoked']['reason']}",
            r["subject"],
        )
        for r in table
    ]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header) - 1)]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in [header, *lines]
    ]


def _row(entry: Entry, now: datetime.datetime) -> dict[str, Any]:
    revoked = None
    if entry.revoked_at is not None:
        revoked = {"at": entry.revoked_at.isoformat(), "reason": entry.reason}
    return {
        "name": entry.name,
        "serial": format_serial(entry.serial),
        "subject": entry.subject,
        "not_after": entry.not_after.isoformat(),
        "seconds_left": int((entry.not_after - now).total_seconds()),
        "time_left": time_left(entry.not_after, now),
        "revoked": revoked,
    }
