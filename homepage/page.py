"""``/``: the public page, a user's contact card fetched from the User Service over mTLS.

Public on purpose: browsers present no client certificate (the listener runs
``MTLS_CLIENT_AUTH=optional``). The mTLS happens behind the page, between the
Home Page and the User Service, and the panel under the card shows it.
"""

from __future__ import annotations

from flask import Blueprint, render_template, request

from homepage.upstream import UserServiceClient
from mtls.policy import mark_public

_MAX_ID_DIGITS = 18  # beyond any SQLite rowid; keeps junk out of the upstream URL


def make_blueprint(userservice: UserServiceClient) -> Blueprint:
    """The page blueprint, bound to one app's User Service client."""
    bp = Blueprint("page", __name__, static_folder="static", static_url_path="/static")
    mark_public(
        bp,
        reason="browsers present no client certificate; the page is the demo's public face",
    )

    @bp.get("/")
    def index() -> tuple[str, int]:
        raw = request.args.get("user")
        if raw is None:
            user, call = userservice.first_user()
            if user is None:
                return render_error(404, "The User Service has no users yet")
        else:
            user_id = _parse_user_id(raw)
            if user_id is None:
                return render_error(
                    400, "That is not a user id", "Use ?user= with a whole number, e.g. ?user=1."
                )
            user, call = userservice.get_user(user_id)
            if user is None:
                return render_error(404, f"There is no user with id {user_id}")
        html = render_template(
            "index.html", user=user, call=call, client_dn=userservice.session.client_dn
        )
        return html, 200

    return bp


def render_error(status: int, headline: str, hint: str = "") -> tuple[str, int]:
    """The friendly error page every browser route uses, never a traceback."""
    return render_template("error.html", status=status, headline=headline, hint=hint), status


def _parse_user_id(raw: str) -> int | None:
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > _MAX_ID_DIGITS:
        return None
    value = int(raw)
    return value if value > 0 else None
