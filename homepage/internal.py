"""``/internal/*``: operator endpoints, JSON only, behind the ops DN policy (``HOMEPAGE_OPS_DN``).

No certificate -> 403 ``{"message": "No certificate chain found!"}``; another
DN -> 403 ``{"message": "Certificate subject is not recognized!"}`` (both from
``mtls.policy``, before any view runs).
"""

from __future__ import annotations

import datetime
import platform
import ssl
from importlib import metadata
from typing import Any

from flask import Blueprint

from homepage.settings import HomePageSettings
from homepage.upstream import UserServiceClient
from mtls.dn import format_dn
from mtls.identity import format_serial
from mtls.policy import require_dn

_PACKAGES = ("flask", "gunicorn", "cryptography", "requests", "urllib3")


def make_blueprint(settings: HomePageSettings, userservice: UserServiceClient) -> Blueprint:
    bp = Blueprint("internal", __name__, url_prefix="/internal")
    require_dn(bp, settings.ops_dn, setting="HOMEPAGE_OPS_DN")

    @bp.get("/status")
    def status() -> dict[str, Any]:
        """Versions, the certificate this process presents, and whether the User Service answers."""
        return {
            "service": "homepage",
            "versions": _versions(),
            "client_certificate": _certificate_report(userservice),
            "userservice": userservice.health(),
        }

    return bp


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
    }
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _certificate_report(userservice: UserServiceClient) -> dict[str, Any]:
    """The certificate loaded at start-up (a file replaced since is not in use yet)."""
    cert = userservice.session.client_certificate
    not_after = cert.not_valid_after_utc
    return {
        "subject": format_dn(cert.subject),
        "issuer": format_dn(cert.issuer),
        "serial": format_serial(cert.serial_number),
        "not_after": not_after.isoformat(),
        "days_left": (not_after - datetime.datetime.now(datetime.UTC)).days,
    }
