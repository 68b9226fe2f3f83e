"""A user's app with its own logger, for the logging test: one line per level on /healthz."""

from __future__ import annotations

import logging

import flask

from mtls.flask import Mtls, mark_public

log = logging.getLogger("acme.orders")  # no handler, no level: a typical library logger

app = flask.Flask(__name__)


@app.get("/healthz")
@mark_public(reason="readiness probe of the logging test")
def healthz() -> str:
    log.debug("acme debug line")
    log.info("acme info line")
    log.warning("acme warning line")
    return "ok"


Mtls(app)
