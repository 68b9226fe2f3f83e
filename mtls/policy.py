"""DN policy: the guide's ``CertificateValidationFilter`` as a Flask blueprint hook.

A blueprint either carries a DN policy (:func:`require_dn`) or is marked public
on purpose (:func:`mark_public`); :func:`enforce_policy_coverage` makes the app
refuse to start when one has neither, so forgetting a policy fails closed.

What is checked: the worker verified a client chain against the trust bundle
(``SSL_CLIENT_VERIFY=SUCCESS``) and the regex matches the WHOLE
``SSL_CLIENT_S_DN`` (``fullmatch``, Java's ``matches()``; never a search, so
``CN=homepage.internal,...,O=Evil`` does not pass a homepage policy).
What is deliberately NOT checked here: chain validity, expiry, revocation
(the worker's handshake owns those) and hostnames/SANs (the guide chose DNs so
that services can move between hosts).

Toward the peer every denial is one of two fixed bodies; the details (DN,
blueprint, path, address) go to the ``mtls.policy`` log.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import flask
from flask.sansio.app import App as SansioApp
from flask.sansio.blueprints import Blueprint as SansioBlueprint
from flask.sansio.blueprints import BlueprintSetupState
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from mtls.decisions import decision_counts
from mtls.errors import PolicyError
from mtls.rules import PeerNames, Rules, compile_rules

NO_CERTIFICATE = "No certificate chain found!"
NOT_RECOGNIZED = "Certificate subject is not recognized!"

logger = logging.getLogger("mtls.policy")

_EXTENSION = "mtls.policy"
V = TypeVar("V", bound=Callable[..., Any])


@dataclass(frozen=True)
class _Policy:
    rules: Rules

    @property
    def setting(self) -> str:
        return self.rules.setting


@dataclass(frozen=True)
class _Public:
    reason: str


Decision = _Policy | _Public

# Decisions live beside the blueprint and view objects rather than on them, so
# Flask's classes are not monkey-patched; weak keys let test objects go away.
_DECISIONS: weakref.WeakKeyDictionary[SansioBlueprint, Decision] = weakref.WeakKeyDictionary()
_VIEW_DECISIONS: weakref.WeakKeyDictionary[Callable[..., Any], Decision] = (
    weakref.WeakKeyDictionary()
)


def compile_dn_policy(pattern: str, *, setting: str) -> re.Pattern[str]:
    """Compile a DN regex once, at start-up; a bad one names ``setting``.

    An empty pattern is refused too: it would deny everybody, which is almost
    always an unset variable rather than an intent.
    """
    if not isinstance(pattern, str) or not pattern.strip():
        raise PolicyError(
            f"{setting} is empty: set it to a regex matching the whole client DN, "
            r"e.g. CN=homepage\.internal,OU=Services,O=Example"
        )
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise PolicyError(
            f"{setting}={pattern!r} is not a valid regular expression ({exc}); "
            "fix the regex (it must match the whole client DN)"
        ) from exc


def _is_flask_static(app: flask.Flask, rule: Any) -> bool:
    """Flask's own static-file route (the app's or a blueprint's), and nothing named like it.

    By endpoint name alone, any view registered as "static" or "x.static"
    escaped the coverage check (hostile review): the route must also be
    the one Flask adds for a static folder, at its path, with its view.
    """
    endpoint = rule.endpoint
    view = app.view_functions.get(endpoint)
    if endpoint == "static":
        owner: Any = app
        is_own_view = getattr(view, "__qualname__", "").startswith("Flask.__init__.")
    elif endpoint.endswith(".static"):
        owner = app.blueprints.get(endpoint.rpartition(".")[0])
        is_own_view = owner is not None and getattr(view, "__self__", None) is owner
        is_own_view = is_own_view and getattr(view, "__name__", "") == "send_static_file"
    else:
        return False
    if owner is None or not owner.has_static_folder or not is_own_view:
        return False
    return bool(str(rule.rule).endswith(f"{owner.static_url_path}/<path:filename>"))


def verified_subject(environ: Mapping[str, Any]) -> str | None:
    """The client's subject DN if the worker verified its chain, else None."""
    if environ.get("SSL_CLIENT_VERIFY") != "SUCCESS":
        return None
    subject = environ.get("SSL_CLIENT_S_DN")
    return subject if isinstance(subject, str) and subject else None


def require_dn(bp: flask.Blueprint, pattern: re.Pattern[str] | str, *, setting: str) -> None:
    """Deny every request into ``bp`` whose verified DN does not fullmatch ``pattern``.

    The shortcut for ``mtls.flask.require_peer(bp, dn=pattern, setting=setting)``;
    an empty pattern is refused, naming ``setting``.
    """
    compiled = compile_dn_policy(pattern, setting=setting) if isinstance(pattern, str) else pattern
    police_blueprint(bp, compile_rules(dn=compiled, setting=setting))


def police_blueprint(bp: flask.Blueprint, rules: Rules) -> None:
    """Apply ``rules`` to every request into ``bp``, routed or not.

    Two hooks, for two reasons:
    - ``bp.before_request`` covers the blueprint's routes (STYLE: blueprint
      hooks, not app-wide ones);
    - a request that fails routing inside the blueprint's URL space (404, 405,
      slash redirect) has ``request.blueprint is None``, so Flask runs no
      blueprint hook for it and an unauthorized client could map the routes by
      probing. ``bp.record`` therefore registers, per registration, the
      blueprint's effective ``url_prefix`` with one app-level hook that
      applies the same policy to unrouted requests only.
    """
    _refuse_non_blueprint(bp, "require_peer")
    if bp in _DECISIONS:
        raise PolicyError(f"blueprint {bp.name!r} already has a DN policy or is marked public")
    policy = _Policy(rules)
    _DECISIONS[bp] = policy

    @bp.before_request
    def _check_peer() -> flask.Response | None:
        return _check(policy, lambda request: f"blueprint {request.blueprint or bp.name!r}")

    bp.record(lambda state: _register_prefix(state, policy))


def police_view(view: V, rules: Rules) -> V:
    """``view`` wrapped so that ``rules`` hold before it runs (after any blueprint policy)."""
    _refuse_second_decision(view)
    policy = _Policy(rules)

    @functools.wraps(view)
    def policed(*args: Any, **kwargs: Any) -> Any:
        denied = _check(policy, lambda request: f"view {request.endpoint or view.__name__!r}")
        return denied if denied is not None else view(*args, **kwargs)

    _VIEW_DECISIONS[policed] = policy
    return policed  # type: ignore[return-value]  # same signature, by functools.wraps


def mark_public(bp: flask.Blueprint, *, reason: str) -> None:
    """Opt ``bp`` out of policing on purpose; ``reason`` is logged at start-up."""
    _refuse_non_blueprint(bp, "mark_public")
    if not reason.strip():
        raise PolicyError(f"blueprint {bp.name!r}: mark_public needs a reason")
    if bp in _DECISIONS:
        raise PolicyError(f"blueprint {bp.name!r} already has a DN policy or is marked public")
    _DECISIONS[bp] = _Public(reason)


def mark_view_public(view: V, *, reason: str) -> V:
    """Opt one view out of policing on purpose (inside no policed blueprint)."""
    if not reason.strip():
        raise PolicyError(f"view {view.__name__!r}: mark_public needs a reason")
    _refuse_second_decision(view)
    _VIEW_DECISIONS[view] = _Public(reason)
    return view


def refuse_app(target: object, function: str) -> None:
    """A Flask app where a blueprint belongs: say what to do instead of an AttributeError."""
    if isinstance(target, flask.Flask):
        raise TypeError(
            f"{function}() got the Flask app {target.name!r}, not a Blueprint: put the routes "
            f"in a flask.Blueprint and call {function}(bp, ...) before registering it, or "
            f"decorate each view with @{function}(...) below its route decorator"
        )


def _refuse_non_blueprint(target: object, function: str) -> None:
    refuse_app(target, function)
    if not isinstance(target, SansioBlueprint):
        raise TypeError(f"{function}() takes a flask.Blueprint, not {type(target).__name__}")


def _refuse_second_decision(view: Callable[..., Any]) -> None:
    if view in _VIEW_DECISIONS:
        raise PolicyError(
            f"view {view.__name__!r} already has a policy or is marked public: "
            "give it one require_peer(...) with every rule, or mark_public alone"
        )


def enforce_policy_coverage(app: flask.Flask) -> None:
    """Refuse to start unless every endpoint is policed or public on purpose.

    An endpoint is covered by its view's own decision, or by its blueprint's
    or an ancestor's (a parent's ``before_request`` runs for its nested
    blueprints too). Static files (the app's and blueprints') are public.
    A view marked public inside a policed blueprint is a contradiction (the
    blueprint's hook would deny it anyway) and refused. Every problem is
    reported in one PolicyError.
    """
    problems: list[str] = []
    for rule in app.url_map.iter_rules():
        endpoint = rule.endpoint
        if _is_flask_static(app, rule):
            continue
        owner = endpoint.rpartition(".")[0]
        inherited = _decision_for(app, owner) if owner in app.blueprints else None
        own = _VIEW_DECISIONS.get(app.view_functions.get(endpoint))  # type: ignore[arg-type]
        where = f"route {rule.rule!r} (endpoint {endpoint!r})"
        if isinstance(own, _Public) and isinstance(inherited, _Policy):
            problems.append(
                f"{where} is marked public inside blueprint {owner!r}, whose policy "
                f"({inherited.setting}) applies to all its routes: move it out of the blueprint"
            )
        elif own is None and inherited is None:
            fix = (
                f"call require_peer(bp, ...) or mark_public(bp, reason=...) on blueprint {owner!r}"
                if owner in app.blueprints
                else "move it into a policed blueprint"
            )
            problems.append(
                f"{where} is neither policed nor public: {fix}, or decorate its view with "
                "@require_peer(...) or @mark_public(reason=...) below the route decorator"
            )
    for name, bp in app.blueprints.items():
        decision = _DECISIONS.get(bp)
        if isinstance(decision, _Public):
            logger.info("blueprint %r is public: %s", name, decision.reason)
    if problems:
        raise PolicyError(
            f"policy coverage incomplete ({len(problems)} endpoint(s), failing closed):\n  "
            + "\n  ".join(problems)
        )


def _decision_for(app: flask.Flask, name: str) -> Decision | None:
    """The decision of blueprint ``name`` (dotted) or of its nearest ancestor."""
    parts = name.split(".")
    while parts:
        bp = app.blueprints.get(".".join(parts))
        decision = _DECISIONS.get(bp) if bp is not None else None
        if decision is not None:
            return decision
        parts.pop()
    return None


def _check(policy: _Policy, scope: str | Callable[[flask.Request], str]) -> flask.Response | None:
    """Apply ``policy`` to the current request: None to proceed, else the 403.

    ``scope`` names the blueprint or view whose policy this is, for the log
    (or computes that name from the request). In report mode a would-be
    denial is logged at WARNING, counted and served; missing mTLS keys are
    denied in either mode (nothing can be evaluated).

    Runs on every request into a policed blueprint, so the allowed path
    computes no log text: the scope's name (when the request has an
    endpoint) and the request's description only on a denial.
    """
    request: flask.Request = flask.request._get_current_object()  # type: ignore[attr-defined]
    environ = request.environ
    rules = policy.rules
    if "SSL_CLIENT_VERIFY" not in environ:
        # Fail closed: without our worker nothing vouches for any identity
        # (e.g. gunicorn swapped in its stock gthread worker).
        logger.error(
            "denied %s: no mTLS keys in the WSGI environ; the app is not running under "
            "mtls.worker.MtlsWorker (start gunicorn with -c python:mtls.gunicorn_conf)",
            _where(request, scope),
        )
        count_decision(_endpoint(request, scope), "deny", "enforce")
        return _deny(NO_CERTIFICATE)
    peer = PeerNames.from_environ(environ)
    if peer is None:
        verify = environ.get("SSL_CLIENT_VERIFY")
        reason = f"no verified client certificate (SSL_CLIENT_VERIFY={verify!r})"
        body = NO_CERTIFICATE
    else:
        failure = rules.failure(peer)
        if failure is None:
            count_decision(_endpoint(request, scope), "allow", rules.mode)
            return None
        reason = f"subject {peer.subject_dn!r} does not match {rules.setting} ({failure})"
        body = NOT_RECOGNIZED
    count_decision(_endpoint(request, scope), "deny", rules.mode)
    if rules.mode == "report":
        logger.warning(
            "report mode, served what enforce would deny: %s: %s", _where(request, scope), reason
        )
        return None
    logger.warning("denied %s: %s", _where(request, scope), reason)
    return _deny(body)


def _scope(request: flask.Request, scope: str | Callable[[flask.Request], str]) -> str:
    return scope if isinstance(scope, str) else scope(request)


def _endpoint(request: flask.Request, scope: str | Callable[[flask.Request], str]) -> str:
    """What decisions are counted under: the endpoint, or for an unrouted request the scope."""
    return request.endpoint or _scope(request, scope)


def _where(request: flask.Request, scope: str | Callable[[flask.Request], str]) -> str:
    remote = request.environ.get("REMOTE_ADDR", "-")
    return f"{request.method} {request.path} ({_scope(request, scope)}, from {remote})"


def _deny(message: str) -> flask.Response:
    # json.dumps' default separators give the documented body byte for byte,
    # whatever the app's JSON provider or debug mode would do.
    return flask.Response(json.dumps({"message": message}), 403, mimetype="application/json")


@dataclass
class _UnroutedGuard:
    """Per app: which URL prefixes are policed, for requests that fail routing."""

    prefixes: dict[str, tuple[str, _Policy]] = field(default_factory=dict)  # prefix -> bp, policy
    by_name: dict[str, _Policy] = field(default_factory=dict)

    def __call__(self) -> flask.Response | None:
        # The request itself, not the proxy: each attribute read through
        # flask.request costs ~1 us, and this runs on every request.
        request: flask.Request = flask.request._get_current_object()  # type: ignore[attr-defined]
        if request.routing_exception is None:
            return None  # routed: the blueprint's and the view's own checks decide
        owners = self._owners_of_rule(request.routing_exception)
        by_path = self._owner_of_path(request.path)
        for scope, policy in owners or ([by_path] if by_path else []):
            denied = _check(policy, scope)
            if denied is not None:
                return denied
        return None

    def _owners_of_rule(self, exc: Exception) -> list[tuple[str, _Policy]]:
        """For a 405: the policies of the rule that exists for other methods.

        Its blueprint's (or nearest ancestor's) first, then its view's own.
        """
        if not isinstance(exc, MethodNotAllowed) or not exc.valid_methods:
            return []
        app = flask.current_app
        adapter = app.create_url_adapter(flask.request)
        if adapter is None:
            return []
        try:
            rule, _ = adapter.match(method=next(iter(exc.valid_methods)), return_rule=True)
        except HTTPException:
            return []
        owners: list[tuple[str, _Policy]] = []
        parts = rule.endpoint.split(".")[:-1]
        while parts:
            policy = self.by_name.get(".".join(parts))
            if policy is not None:
                owners.append((f"blueprint {'.'.join(parts)!r}", policy))
                break
            parts.pop()
        own = _VIEW_DECISIONS.get(app.view_functions.get(rule.endpoint))  # type: ignore[arg-type]
        if isinstance(own, _Policy):
            owners.append((f"view {rule.endpoint!r}", own))
        return owners

    def _owner_of_path(self, path: str) -> tuple[str, _Policy] | None:
        """The policed blueprint with the longest url_prefix containing ``path``.

        As ``(scope, policy)``, scope being ``blueprint 'name'`` for the log.
        """
        path = re.sub("/{2,}", "/", path)  # werkzeug merges slashes; so do we
        best: tuple[str, _Policy] | None = None
        best_len = -1
        for prefix, owner in self.prefixes.items():
            inside = path == prefix or path.startswith(prefix + "/")
            if inside and len(prefix) > best_len:
                best, best_len = owner, len(prefix)
        return best


def install_guard(app: SansioApp) -> _UnroutedGuard:
    """The app's guard for unrouted requests, installed once, first in line.

    First, so no other app-level hook runs for a denied probe.
    """
    guard = app.extensions.get(_EXTENSION)
    if not isinstance(guard, _UnroutedGuard):
        guard = _UnroutedGuard()
        app.extensions[_EXTENSION] = guard
        app.before_request_funcs.setdefault(None, []).insert(0, guard)
    return guard


def count_decision(endpoint: str, decision: str, mode: str) -> None:
    # The app itself, not the proxy (~2 us a policed request through it).
    app = flask.current_app._get_current_object()  # type: ignore[attr-defined]
    decision_counts(app).add(endpoint, decision, mode)


def _register_prefix(state: BlueprintSetupState, policy: _Policy) -> None:
    guard = install_guard(state.app)
    name = f"{state.name_prefix}.{state.name}".lstrip(".")
    guard.by_name[name] = policy
    prefix = state.url_prefix
    if prefix is None:
        return  # no URL space beyond its rules: 405s are covered via the rule owner
    if "<" in prefix:
        raise PolicyError(
            f"blueprint {name!r}: url_prefix {prefix!r} has a converter; DN policies need "
            "a static prefix to cover unrouted requests"
        )
    guard.prefixes[prefix.rstrip("/")] = (f"blueprint {name!r}", policy)
