"""The Flask extension: identity rules per blueprint or view, and an app that fails closed.

    from mtls.flask import Mtls, current_peer, mark_public, require_peer

    api = Blueprint("api", __name__, url_prefix="/api")
    require_peer(api, san_uri="spiffe://example.org/ns/*/sa/billing")

    @api.get("/invoices")
    def invoices(): return {"caller": current_peer().subject_dn}

    app.register_blueprint(api)
    Mtls(app)   # last: refuses to start while an endpoint is neither policed nor public

Rules and their meaning live in :mod:`mtls.rules` (also used by the client
side); the request hooks, the 404/405 guard and the coverage check in
:mod:`mtls.policy`. Denials are the SPEC's two fixed 403 bodies, details go
to the ``mtls.policy`` log.

Why ``current_peer()`` is a function and not a ``LocalProxy``: a proxy that
stands for ``None`` is not ``None`` (``current_peer is None`` would be False
for an anonymous caller), a trap where identity is concerned; the function
returns a plain ``PeerIdentity | None`` that mypy can check.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, overload

import flask
from flask.sansio.blueprints import Blueprint as SansioBlueprint

from mtls.decisions import decision_counts
from mtls.errors import PolicyError
from mtls.identity import PEER_ENVIRON_KEY, PeerIdentity
from mtls.policy import (
    NO_CERTIFICATE,
    NOT_RECOGNIZED,
    enforce_policy_coverage,
    install_guard,
    mark_view_public,
    police_blueprint,
    police_view,
    refuse_app,
    require_dn,
)
from mtls.policy import mark_public as mark_blueprint_public
from mtls.rules import compile_rules

__all__ = [
    "NOT_RECOGNIZED",
    "NO_CERTIFICATE",
    "Mtls",
    "PeerIdentity",
    "current_peer",
    "mark_public",
    "require_dn",
    "require_peer",
]

logger = logging.getLogger("mtls.policy")

# What require_peer polices: a Blueprint (returned as it is) or a view.
Policed = TypeVar("Policed")
Regex = str | re.Pattern[str] | Sequence[str | re.Pattern[str]] | None
Values = str | Sequence[str] | None


class Mtls:
    """``Mtls(app)`` or ``Mtls().init_app(app)``: check coverage now, and again before serving.

    Call it after registering every blueprint (the end of ``create_app``):
    it raises PolicyError naming each endpoint that is neither policed nor
    public, so the app never starts. Routes added later are caught by the
    same check on the first request (Flask allows no new routes after it):
    then every request is refused with a 503 and the log names them.
    """

    def __init__(self, app: flask.Flask | None = None) -> None:
        self._lock = threading.Lock()
        self._checked: set[int] = set()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: flask.Flask) -> None:
        if not isinstance(app, flask.Flask):
            raise TypeError(f"Mtls.init_app() takes the Flask app, not {type(app).__name__}")
        enforce_policy_coverage(app)
        install_guard(app)
        decision_counts(app)
        app.extensions["mtls"] = self
        # Before the unrouted guard, so an incomplete app answers nothing at all.
        app.before_request_funcs.setdefault(None, []).insert(0, self._check_once)

    def decisions(self, app: flask.Flask | None = None) -> dict[tuple[str, str, str], int]:
        """Policy decisions so far: ``{(endpoint, "allow"|"deny", mode): count}``.

        In report mode, ``deny`` counts the would-be denials that were served.
        """
        target = app if app is not None else flask.current_app
        return decision_counts(target).snapshot()

    def _check_once(self) -> flask.Response | None:
        app = flask.current_app
        key = id(app)
        if key in self._checked:
            return None
        try:
            enforce_policy_coverage(app)
        except PolicyError as exc:
            logger.error("refusing every request: %s", exc)
            body = json.dumps({"message": "Service unavailable: its access policy is incomplete."})
            return flask.Response(body, 503, mimetype="application/json")
        with self._lock:
            self._checked.add(key)
        return None


@overload
def require_peer(
    target: Policed,
    /,
    *,
    dn: Regex = None,
    issuer_dn: Regex = None,
    cn: Values = None,
    ou: Values = None,
    san_dns: Values = None,
    san_uri: Values = None,
    mode: str = "enforce",
    setting: str | None = None,
) -> Policed: ...
@overload
def require_peer(
    target: None = None,
    /,
    *,
    dn: Regex = None,
    issuer_dn: Regex = None,
    cn: Values = None,
    ou: Values = None,
    san_dns: Values = None,
    san_uri: Values = None,
    mode: str = "enforce",
    setting: str | None = None,
) -> Callable[[Policed], Policed]: ...
def require_peer(
    target: Any = None,
    /,
    *,
    dn: Regex = None,
    issuer_dn: Regex = None,
    cn: Values = None,
    ou: Values = None,
    san_dns: Values = None,
    san_uri: Values = None,
    mode: str = "enforce",
    setting: str | None = None,
) -> Any:
    """Require a verified client certificate that satisfies every rule given.

    On a Blueprint, ``require_peer(bp, ...)`` before registering it: all its
    routes, and 404/405 answers inside its ``url_prefix``. On a view,
    ``@require_peer(...)`` below the route decorator. No rules: any verified
    certificate. Rules are those of :func:`mtls.rules.compile_rules`, checked
    now (a bad one raises PolicyError naming ``setting``, by default the
    blueprint or view). ``mode="report"`` serves a would-be denial, logs it at
    WARNING with the rule that failed, and counts it (:meth:`Mtls.decisions`).
    """
    kinds = {"dn": dn, "issuer_dn": issuer_dn, "cn": cn, "ou": ou}
    kinds.update(san_dns=san_dns, san_uri=san_uri)

    def apply(obj: Any) -> Any:
        _refuse_app(obj, "require_peer")
        name = setting or f"require_peer on {_describe(obj)}"
        rules = compile_rules(**kinds, mode=mode, setting=name)  # type: ignore[arg-type]
        if isinstance(obj, SansioBlueprint):
            police_blueprint(obj, rules)  # type: ignore[arg-type]  # sansio or flask Blueprint
            return obj
        return police_view(obj, rules)

    return apply if target is None else apply(target)


@overload
def mark_public(target: Policed, /, *, reason: str) -> Policed: ...
@overload
def mark_public(target: None = None, /, *, reason: str) -> Callable[[Policed], Policed]: ...
def mark_public(target: Any = None, /, *, reason: str) -> Any:
    """Serve a Blueprint or a view to anyone, on purpose; ``reason`` is logged at start-up.

    The TLS layer still authenticates whatever ``MTLS_CLIENT_AUTH`` asks for;
    public only means no identity rules.
    """

    def apply(obj: Any) -> Any:
        _refuse_app(obj, "mark_public")
        if isinstance(obj, SansioBlueprint):
            mark_blueprint_public(obj, reason=reason)  # type: ignore[arg-type]
            return obj
        return mark_view_public(obj, reason=reason)

    return apply if target is None else apply(target)


def current_peer() -> PeerIdentity | None:
    """The verified client certificate of the current request, or None.

    None without a certificate the worker verified (``SSL_CLIENT_VERIFY``
    other than ``SUCCESS``), and outside our worker. Needs a request context.
    """
    environ = flask.request.environ
    peer = environ.get(PEER_ENVIRON_KEY)
    if environ.get("SSL_CLIENT_VERIFY") != "SUCCESS" or not isinstance(peer, PeerIdentity):
        return None
    return peer


def _refuse_app(target: object, function: str) -> None:
    refuse_app(target, function)
    if not (isinstance(target, SansioBlueprint) or callable(target)):
        raise TypeError(
            f"{function}() takes a flask.Blueprint or a view function, not {type(target).__name__}"
        )


def _describe(obj: Any) -> str:
    if isinstance(obj, SansioBlueprint):
        return f"blueprint {obj.name!r}"
    return f"view {getattr(obj, '__qualname__', obj)!r}"
