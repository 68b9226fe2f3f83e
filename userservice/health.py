"""``/healthz``: does this instance answer, and does its database?

Public at the HTTP layer on purpose: a load balancer's probe carries no
identity worth a DN rule, and on a ``MTLS_CLIENT_AUTH=required`` listener the
probe has already passed the TLS handshake with a trusted certificate. It
reveals nothing but "ok" or "unavailable".
"""

from __future__ import annotations

from flask import Blueprint

from mtls.policy import mark_public
from userservice.store import UserStore


def make_blueprint(store: UserStore) -> Blueprint:
    bp = Blueprint("health", __name__, url_prefix="/healthz")
    mark_public(bp, reason="load balancer health check (the TLS layer already authenticates)")

    @bp.get("")
    def healthz() -> tuple[dict[str, str], int]:
        if store.healthy():
            return {"status": "ok"}, 200
        return {"status": "unavailable", "message": "The database does not answer."}, 503

    return bp
