"""The Home Page Service: a public page showing a user fetched from the User Service over mTLS.

``create_app`` follows Flask's tutorial factory; everything it needs comes
from :class:`HomePageSettings`, so tests pass a settings object and
production reads the environment. It refuses to start (ConfigError or
PolicyError) rather than serve with a bad setting, an unusable certificate
(a one-line ConfigError naming HOMEPAGE_CLIENT_CERT, _KEY or HOMEPAGE_CA_CERTS)
or an unpoliced blueprint.

Errors: browser routes get a friendly HTML page, ``/internal/*`` gets JSON
``{"message": ...}``; neither ever shows a traceback.
"""

from __future__ import annotations

import json

from flask import Flask, request
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from homepage import health, internal, page
from homepage.settings import HomePageSettings
from homepage.upstream import UpstreamFailure, UserServiceClient
from mtls.errors import CertificateFileError
from mtls.policy import enforce_policy_coverage

__all__ = ["HomePageSettings", "create_app"]

# The page needs nothing but its own stylesheet: no scripts, no frames, no
# third parties. Personal data: never cached.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def create_app(settings: HomePageSettings | None = None) -> Flask:
    """Build the Home Page; ``settings`` default to ``HomePageSettings.from_env()``."""
    settings = HomePageSettings.from_env() if settings is None else settings
    app = Flask(__name__, static_folder=None)  # the page blueprint serves /static
    try:
        userservice = UserServiceClient(settings)  # loads our certificate: fails fast
    except CertificateFileError as exc:
        raise settings.blame(exc) from None
    app.extensions["homepage.userservice"] = userservice

    app.register_blueprint(page.make_blueprint(userservice))
    app.register_blueprint(internal.make_blueprint(settings, userservice))
    app.register_blueprint(health.make_blueprint())
    _register_error_handlers(app)
    app.after_request(_add_security_headers)

    enforce_policy_coverage(app)
    return app


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(UpstreamFailure)
    def _upstream(failure: UpstreamFailure) -> Response | tuple[str, int]:
        # Already logged with its cause by homepage.upstream.
        if _is_internal():
            return _json({"message": failure.headline}, failure.status)
        return page.render_error(failure.status, failure.headline, failure.hint)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response | tuple[str, int]:
        # Also reached for unhandled exceptions (as a 500), which Flask has
        # already logged with their traceback; the browser gets none of it.
        status = exc.code or 500
        if _is_internal():
            response = exc.get_response()  # keeps headers such as Allow on a 405
            response.set_data(json.dumps({"message": f"{exc.name}."}))
            response.content_type = "application/json"
            return response
        return page.render_error(status, exc.name)


def _is_internal() -> bool:
    return request.path == "/internal" or request.path.startswith("/internal/")


def _json(payload: dict[str, str], status: int) -> Response:
    return Response(json.dumps(payload), status, mimetype="application/json")


def _add_security_headers(response: Response) -> Response:
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
