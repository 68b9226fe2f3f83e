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

from mtls.identity import PEER_ENVIRON_KEY, PeerIdentity
from mtls.policy import require_dn

# Any verified DN; DOTALL so even an odd DN with a newline is "any".
ANY_VERIFIED_DN = re.compile(".*", re.DOTALL)


def make_blueprint() -> Blueprint:
    bp = Blueprint("whoami", __name__, url_prefix="/whoami")
    require_dn(bp, ANY_VERIFIED_DN, setting="whoami (any verified client)")

    @bp.get("")
    def whoami() -> dict[str, Any]:
        return describe_peer(request.environ)

    return bp


def describe_peer(environ: Mapping[str, Any]) -> dict[str, Any]:
    """The whoami JSON: the identity from the worker's parsed certificate, the TLS facts
    from its mod_ssl-style environ keys."""
    peer = environ.get(PEER_ENVIRON_KEY)
    identity = peer if isinstance(peer, PeerIdentity) else None
    resumed = environ.get("SSL_SESSION_RESUMED")
    return {
        "subject_dn": identity.subject_dn if identity else None,
        "issuer_dn": identity.issuer_dn if identity else None,
        "serial": identity.serial if identity else None,
        "not_before": _iso(identity.not_before) if identity else None,
        "not_after": _iso(identity.not_after) if identity else None,
        "days_left": _int(environ.get("SSL_CLIENT_V_REMAIN")),
        "san_dns": list(identity.san_dns) if identity else [],
        "san_uri": list(identity.san_uri) if identity else [],
        "san_email": list(identity.san_email) if identity else [],
        "verify": environ.get("SSL_CLIENT_VERIFY"),
        "remote_addr": environ.get("REMOTE_ADDR"),
        "remote_port": _int(environ.get("REMOTE_PORT")),
        "protocol": environ.get("SSL_PROTOCOL"),
        "cipher": environ.get("SSL_CIPHER"),
        "sni": environ.get("SSL_TLS_SNI"),
        "session_resumed": None if resumed is None else resumed == "Resumed",
    }


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
