"""Orders: a small service of your own behind mutual TLS, using only the installed library.

    pip install internal-mtls            # or the wheel / a checkout: mtls and pki
    gunicorn -c python:mtls.gunicorn_conf --bind 127.0.0.1:8443 orders:app

The TLS files come from MTLS_CERTFILE, MTLS_KEYFILE and MTLS_CA_CERTS (see the
README's "Your own service in five minutes"). ``/api/*`` is allowed to the
SPIFFE IDs in ORDERS_ALLOWED_SAN_URI only; ``/healthz`` is public on purpose.
ORDERS_POLICY_MODE=report tries the policy out: would-be denials are served
and logged at WARNING. Forget to police a route and the app does not start.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from flask import Blueprint, Flask, request, url_for

from mtls.flask import Mtls, current_peer, mark_public, require_peer

log = logging.getLogger("orders")  # goes to gunicorn's error log, at --log-level


def create_app() -> Flask:
    app = Flask(__name__)

    api = Blueprint("api", __name__, url_prefix="/api")
    require_peer(
        api,
        san_uri=os.environ.get("ORDERS_ALLOWED_SAN_URI", "spiffe://example.org/ns/*/sa/billing"),
        mode=os.environ.get("ORDERS_POLICY_MODE", "enforce"),
        setting="ORDERS_ALLOWED_SAN_URI",
    )

    @api.get("/orders")
    def orders() -> dict[str, Any]:
        peer = current_peer()
        caller = list(peer.san_uri) if peer is not None else []
        log.info("orders listed for %s", caller)
        return {
            "orders": [{"id": 1, "item": "coffee beans", "quantity": 3}],
            "caller": caller,
            "secure": request.is_secure,
            "self": url_for(".orders", _external=True),
        }

    @app.get("/healthz")
    @mark_public(reason="load balancer health check")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.register_blueprint(api)
    Mtls(app)  # last: refuses to start while an endpoint is neither policed nor public
    return app


app = create_app()
