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

import json
import logging
import re
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import flask
from flask.sansio.blueprints import Blueprint as SansioBlueprint
from flask.sansio.blueprints import BlueprintSetupState
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from mtls.errors import PolicyError

NO_CERTIFICATE = "No certificate chain found!"
NOT_RECOGNIZED = "Certificate subject is not recognized!"

logger = logging.getLogger("mtls.policy")

_EXTENSION = "mtls.policy"


@dataclass(frozen=True)
class _Policy:
    pattern: re.Pattern[str]
    setting: str


@dataclass(frozen=True)
class _Public:
    reason: str


# Decisions live beside the blueprint objects rather than on them, so Flask's
# Blueprint class is not monkey-patched; weak keys let test blueprints go away.
_DECISIONS: weakref.WeakKeyDictionary[SansioBlueprint, _Policy | _Public] = (
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


def verified_subject(environ: Mapping[str, Any]) -> str | None:
    """The client's subject DN if the worker verified its chain, else None."""
    if environ.get("SSL_CLIENT_VERIFY") != "SUCCESS":
        return None
    subject = environ.get("SSL_CLIENT_S_DN")
    return subject if isinstance(subject, str) and subject else None


def require_dn(bp: flask.Blueprint, pattern: re.Pattern[str] | str, *, setting: str) -> None:
    """Deny every request into ``bp`` whose verified DN does not fullmatch ``pattern``.

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
    if bp in _DECISIONS:
        raise PolicyError(f"blueprint {bp.name!r} already has a DN policy or is marked public")
    compiled = compile_dn_policy(pattern, setting=setting) if isinstance(pattern, str) else pattern
    policy = _Policy(compiled, setting)
    _DECISIONS[bp] = policy

    @bp.before_request
    def _check_dn() -> flask.Response | None:
        return _check(policy, flask.request.blueprint or bp.name)

    bp.record(lambda state: _register_prefix(state, policy))


def mark_public(bp: flask.Blueprint, *, reason: str) -> None:
    """Opt ``bp`` out of DN policing on purpose; ``reason`` is logged at start-up."""
    if not reason.strip():
        raise PolicyError(f"blueprint {bp.name!r}: mark_public needs a reason")
    if bp in _DECISIONS:
        raise PolicyError(f"blueprint {bp.name!r} already has a DN policy or is marked public")
    _DECISIONS[bp] = _Public(reason)


def enforce_policy_coverage(app: flask.Flask) -> None:
    """Refuse to start unless every route is DN-policed or public on purpose.

    A blueprint is covered by its own decision or by an ancestor's (a parent's
    ``before_request`` runs for its nested blueprints too). A route outside any
    blueprint (other than the app's ``static``) has no policy at all and is
    refused. Every problem is reported in one PolicyError.
    """
    problems: list[str] = []
    for name, bp in app.blueprints.items():
        decision = _decision_for(app, name)
        if decision is None:
            problems.append(
                f"blueprint {name!r} has no DN policy: call mtls.policy.require_dn(bp, ...) "
                "or mtls.policy.mark_public(bp, reason=...)"
            )
        elif isinstance(decision, _Public) and _DECISIONS.get(bp) is decision:
            logger.info("blueprint %r is public: %s", name, decision.reason)
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        owner = rule.endpoint.rpartition(".")[0]
        if owner not in app.blueprints:
            problems.append(
                f"route {rule.rule!r} (endpoint {rule.endpoint!r}) lives outside any "
                "blueprint, so no DN policy can cover it: move it into a blueprint"
            )
    if problems:
        raise PolicyError("DN policy coverage incomplete:\n  " + "\n  ".join(problems))


def _decision_for(app: flask.Flask, name: str) -> _Policy | _Public | None:
    """The decision of blueprint ``name`` (dotted) or of its nearest ancestor."""
    parts = name.split(".")
    while parts:
        bp = app.blueprints.get(".".join(parts))
        decision = _DECISIONS.get(bp) if bp is not None else None
        if decision is not None:
            return decision
        parts.pop()
    return None


def _check(policy: _Policy, blueprint: str) -> flask.Response | None:
    """Apply ``policy`` to the current request: None to proceed, else the 403."""
    environ = flask.request.environ
    remote = environ.get("REMOTE_ADDR", "-")
    path = flask.request.path
    if "SSL_CLIENT_VERIFY" not in environ:
        # Fail closed: without our worker nothing vouches for any identity
        # (e.g. gunicorn swapped in its stock gthread worker).
        logger.error(
            "denied %s %s (blueprint %r, from %s): no mTLS keys in the WSGI environ; "
            "the app is not running under mtls.worker.MtlsWorker (check worker_class)",
            flask.request.method,
            path,
            blueprint,
            remote,
        )
        return _deny(NO_CERTIFICATE)
    subject = verified_subject(environ)
    if subject is None:
        logger.warning(
            "denied %s %s (blueprint %r, from %s): no verified client certificate "
            "(SSL_CLIENT_VERIFY=%r)",
            flask.request.method,
            path,
            blueprint,
            remote,
            environ.get("SSL_CLIENT_VERIFY"),
        )
        return _deny(NO_CERTIFICATE)
    if policy.pattern.fullmatch(subject) is None:
        logger.warning(
            "denied %s %s (blueprint %r, from %s): subject %r does not match %s",
            flask.request.method,
            path,
            blueprint,
            remote,
            subject,
            policy.setting,
        )
        return _deny(NOT_RECOGNIZED)
    return None


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
        request = flask.request
        if request.routing_exception is None:
            return None  # routed: the blueprint's own hook (or none: public) decides
        owner = self._owner_of_rule(request.routing_exception) or self._owner_of_path(request.path)
        if owner is None:
            return None
        name, policy = owner
        return _check(policy, name)

    def _owner_of_rule(self, exc: Exception) -> tuple[str, _Policy] | None:
        """For a 405, the blueprint owning the rule that exists for other methods."""
        if not isinstance(exc, MethodNotAllowed) or not exc.valid_methods:
            return None
        adapter = flask.current_app.create_url_adapter(flask.request)
        if adapter is None:
            return None
        try:
            rule, _ = adapter.match(method=next(iter(exc.valid_methods)), return_rule=True)
        except HTTPException:
            return None
        parts = rule.endpoint.split(".")[:-1]
        while parts:
            policy = self.by_name.get(".".join(parts))
            if policy is not None:
                return ".".join(parts), policy
            parts.pop()
        return None

    def _owner_of_path(self, path: str) -> tuple[str, _Policy] | None:
        """The policed blueprint with the longest url_prefix containing ``path``."""
        path = re.sub("/{2,}", "/", path)  # werkzeug merges slashes; so do we
        best: tuple[str, _Policy] | None = None
        best_len = -1
        for prefix, owner in self.prefixes.items():
            inside = path == prefix or path.startswith(prefix + "/")
            if inside and len(prefix) > best_len:
                best, best_len = owner, len(prefix)
        return best


def _register_prefix(state: BlueprintSetupState, policy: _Policy) -> None:
    guard = state.app.extensions.get(_EXTENSION)
    if guard is None:
        guard = _UnroutedGuard()
        state.app.extensions[_EXTENSION] = guard
        # First in line, so no other app-level hook runs for a denied probe.
        state.app.before_request_funcs.setdefault(None, []).insert(0, guard)
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
    guard.prefixes[prefix.rstrip("/")] = (name, policy)
