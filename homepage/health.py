"""``/healthz``: is this Home Page's TLS state sound (certificate, CRL, last reload)?

Public: browsers and load balancers carry no client certificate here. It
does not call the User Service (that is /internal/status, behind the ops
DN): a Home Page that is up answers its friendly 503 page when the User
Service is not, and a balancer must not take every Home Page out for it.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from mtls.health import combine, from_environ
from mtls.policy import mark_public


def make_blueprint() -> Blueprint:
    bp = Blueprint("health", __name__, url_prefix="/healthz")
    mark_public(bp, reason="load balancer health check")

    @bp.get("")
    def healthz() -> tuple[dict[str, Any], int]:
        return combine(from_environ(request.environ), True, {})

    return bp
