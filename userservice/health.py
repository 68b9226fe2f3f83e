"""``/healthz``: does this instance answer, is its TLS state sound, and does its database?

Public at the HTTP layer on purpose: a load balancer's probe carries no
identity worth a DN rule, and on a ``MTLS_CLIENT_AUTH=required`` listener the
probe has already passed the TLS handshake with a trusted certificate. It
reveals the served certificate's serial and dates, the CRL's nextUpdate and
the last reload (mtls.health), and whether the database answers.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from mtls.health import combine, from_environ
from mtls.policy import mark_public
from userservice.store import UserStore


def make_blueprint(store: UserStore) -> Blueprint:
    bp = Blueprint("health", __name__, url_prefix="/healthz")
    mark_public(bp, reason="load balancer health check (the TLS layer already authenticates)")

    @bp.get("")
    def healthz() -> tuple[dict[str, Any], int]:
        if store.healthy():
            return combine(from_environ(request.environ), True, {"database": "ok"})
        own = {"database": "unavailable", "message": "The database does not answer."}
        return combine(from_environ(request.environ), False, own)

    return bp
