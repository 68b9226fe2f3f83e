"""The User Service: holds users and hands them to the Home Page over mutual TLS.

``create_app`` follows Flask's tutorial factory; everything it needs comes
from :class:`UserServiceSettings`, so tests pass a settings object and
production reads the environment. The app refuses to start (ConfigError or
PolicyError) rather than serve with a bad setting or an unpoliced blueprint.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Flask
from werkzeug.exceptions import HTTPException, InternalServerError, RequestEntityTooLarge
from werkzeug.wrappers import Response

from mtls.policy import enforce_policy_coverage
from userservice import health, users, whoami
from userservice.access import UsersAccess
from userservice.settings import UserServiceSettings
from userservice.store import StoreUnavailable, open_store

__all__ = ["UserServiceSettings", "create_app"]


def create_app(
    settings: UserServiceSettings | None = None, access: UsersAccess | None = None
) -> Flask:
    """Build the User Service; ``settings`` default to ``UserServiceSettings.from_env()``.

    ``access`` (SAN rules, policy mode) is read from the environment along with
    ``settings``; given ``settings`` alone (tests), it defaults to none and enforce.
    """
    if settings is None:
        settings, access = UserServiceSettings.from_env(), access or UsersAccess.from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body
    # Form parsing limits do not apply (JSON only), but keep them from
    # exceeding the body limit should a form ever be read.
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.max_body

    store = open_store(settings.database)
    # Reachable for whoever must give the connections back (tests, a shutdown hook).
    app.extensions["userservice.store"] = store
    app.register_blueprint(
        users.make_blueprint(store, allowed_dn=settings.allowed_dn, access=access)
    )
    app.register_blueprint(whoami.make_blueprint())
    app.register_blueprint(health.make_blueprint(store))
    _register_error_handlers(app, settings)

    enforce_policy_coverage(app)
    return app


def _register_error_handlers(app: Flask, settings: UserServiceSettings) -> None:
    """Every 4xx/5xx is JSON ``{"message": ...}``; a 500 never shows a traceback."""

    @app.errorhandler(users.BadInput)
    def _bad_input(exc: users.BadInput) -> Response:
        return _json_response({"message": "Invalid input.", "errors": exc.errors}, 400)

    @app.errorhandler(StoreUnavailable)
    def _unavailable(exc: StoreUnavailable) -> Response:
        # The reason (which database, locked / stopped / read-only) is ours;
        # the client learns only that a retry later may work (RFC 9110 15.6.4).
        app.logger.warning("503: %s", exc)
        response = _json_response({"message": "The database is unavailable; try again."}, 503)
        response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge) -> Response:
        return _json_error(exc, f"Request body exceeds {settings.max_body} bytes.")

    @app.errorhandler(InternalServerError)
    def _internal(exc: InternalServerError) -> Response:
        # Flask has already logged the original exception with its traceback
        # (logger "userservice"); the peer learns nothing about it.
        return _json_error(exc, "Internal server error.")

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        # Our own descriptions ("No user with id 7.") go out; werkzeug's stock
        # ones are advice for humans at a browser, so the short name is used.
        own = exc.description and exc.description != type(exc).description
        return _json_error(exc, exc.description if own else f"{exc.name}.")


def _json_error(exc: HTTPException, message: str | None) -> Response:
    # get_response() keeps the status and headers such as Allow on a 405.
    response = exc.get_response()
    response.set_data(json.dumps({"message": message}))
    response.content_type = "application/json"
    return response


def _json_response(payload: dict[str, Any], status: int) -> Response:
    """Error bodies in one style: ``{"message": ...}`` with json's standard separators."""
    return Response(json.dumps(payload), status, mimetype="application/json")
