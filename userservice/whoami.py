"""``/whoami``: shows any verified caller what this server sees of it.

The debugging view of mutual TLS: which identity arrived, from which CA,
over which protocol and cipher, and whether the session was resumed. It
needs a verified certificate (any DN) but no particular one, so a client
denied by ``/users`` can still find out why.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, request

from mtls.policy import require_dn

# Any verified DN; DOTALL so even an odd DN with a newline is "any".
ANY_VERIFIED_DN = re.compile(".*", re.DOTALL)

_MOD_SSL_TIME = "%b %d %H:%M:%S %Y GMT"  # "Feb  6 03:04:05 2027 GMT"


def make_blueprint() -> Blueprint:
    bp = Blueprint("whoami", __name__, url_prefix="/whoami")
    require_dn(bp, ANY_VERIFIED_DN, setting="whoami (any verified client)")

    @bp.get("")
    def whoami() -> dict[str, Any]:
        return describe_peer(request.environ)

    return bp


def describe_peer(environ: Mapping[str, Any]) -> dict[str, Any]:
    """The SPEC's whoami JSON from the worker's mod_ssl-style environ keys."""
    resumed = environ.get("SSL_SESSION_RESUMED")
    return {
        "subject_dn": environ.get("SSL_CLIENT_S_DN"),
        "issuer_dn": environ.get("SSL_CLIENT_I_DN"),
        "serial": environ.get("SSL_CLIENT_M_SERIAL"),
        "not_before": _iso_time(environ.get("SSL_CLIENT_V_START")),
        "not_after": _iso_time(environ.get("SSL_CLIENT_V_END")),
        "days_left": _int(environ.get("SSL_CLIENT_V_REMAIN")),
        "san_dns": _numbered(environ, "SSL_CLIENT_SAN_DNS_"),
        "san_uri": _numbered(environ, "SSL_CLIENT_SAN_URI_"),
        "san_email": _numbered(environ, "SSL_CLIENT_SAN_Email_"),
        "verify": environ.get("SSL_CLIENT_VERIFY"),
        "remote_addr": environ.get("REMOTE_ADDR"),
        "remote_port": _int(environ.get("REMOTE_PORT")),
        "protocol": environ.get("SSL_PROTOCOL"),
        "cipher": environ.get("SSL_CIPHER"),
        "sni": environ.get("SSL_TLS_SNI"),
        "session_resumed": None if resumed is None else resumed == "Resumed",
    }


def _numbered(environ: Mapping[str, Any], prefix: str) -> list[str]:
    """mod_ssl's ``PREFIX0``, ``PREFIX1``, ... until the first gap."""
    values: list[str] = []
    while (value := environ.get(f"{prefix}{len(values)}")) is not None:
        values.append(str(value))
    return values


def _iso_time(value: Any) -> str | None:
    """mod_ssl's ``Feb  6 03:04:05 2027 GMT`` as ISO 8601 UTC; None if absent or odd."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.strptime(value, _MOD_SSL_TIME).replace(tzinfo=UTC)
    except ValueError:
        return None
    return moment.isoformat().replace("+00:00", "Z")


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
