"""The User Service as the Home Page sees it: typed answers, or one failure in plain words.

Every way a call can go wrong ends here as an :class:`UpstreamFailure` that
carries the status we answer the browser with (502: the User Service answered
wrongly or refused us; 503: it is down or too slow), a headline saying WHICH
in plain words, and a hint.

What reaches the browser is our own text plus, at most, the status code the
User Service answered and, for a 401/403, its policy refusal's ``message``
when that is one of the DN policy's two fixed answers ("No certificate chain
found!", "Certificate subject is not recognized!"): those say which side of
the certificate check failed, carry nothing of the request or the server,
and are what an operator will grep for. Nothing else of the upstream answer
(any other ``message``, reason phrase, headers, body) and no exception text
reaches the browser: it would be text from a peer we did not write, shown to
someone who did not ask for it. All of it goes to the ``homepage.upstream``
log instead.
"""

from __future__ import annotations

import http.cookiejar
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import requests
from urllib3.exceptions import NewConnectionError

from homepage.settings import HomePageSettings
from mtls.client import MtlsSession, TlsFacts, make_session, tls_facts
from mtls.errors import (
    ClientCertificateRefusedError,
    UpstreamError,
    UpstreamIdentityError,
    UpstreamRedirectError,
)
from mtls.policy import NO_CERTIFICATE, NOT_RECOGNIZED

log = logging.getLogger("homepage.upstream")

#: The only upstream text the browser may see (see the module docstring).
_POLICY_MESSAGES = frozenset({NO_CERTIFICATE, NOT_RECOGNIZED})

_CERT_HINT = (
    "Check that the Home Page's certificate (HOMEPAGE_CLIENT_CERT) is issued by a CA the "
    "User Service trusts, is not expired or revoked, and that its DN is allowed there."
)
_IDENTITY_HINT = (
    "Its certificate must chain to HOMEPAGE_CA_CERTS, name the host in "
    "HOMEPAGE_USERSERVICE_URL and match HOMEPAGE_USERSERVICE_DN if that is set."
)

_REDIRECT_HINT = (
    "Redirects to another scheme, host or port are not followed: our client certificate "
    "would go with them. HOMEPAGE_USERSERVICE_URL must be the User Service's own address."
)


@dataclass(frozen=True)
class User:
    id: int
    name: str
    email: str
    phone: str


@dataclass(frozen=True)
class Call:
    """One request to the User Service and what its connection proved (the page's panel)."""

    method: str
    url: str
    status: int
    tls: TlsFacts


class UpstreamFailure(Exception):
    """No usable answer from the User Service; ``status`` is what the browser gets."""

    def __init__(self, status: int, headline: str, hint: str = "") -> None:
        super().__init__(headline)
        self.status = status
        self.headline = headline
        self.hint = hint


class UserServiceClient:
    """GETs against the User Service over one pooled mTLS session (shared by all threads)."""

    def __init__(self, settings: HomePageSettings) -> None:
        self.base_url = settings.userservice_url
        self.connect_timeout = settings.client.connect_timeout
        self.read_timeout = settings.client.read_timeout
        self.session: MtlsSession = make_session(settings.client)
        # One session serves every browser: no cookie may carry over between them.
        self.session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))

    def first_user(self) -> tuple[User | None, Call]:
        """The first user by id (``GET /users?limit=1``); None when there are none."""
        response, call = self._get("/users?limit=1")
        body = self._json(response, call)
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise self._unreadable(call, "no 'items' list")
        return (self._user(items[0], call) if items else None), call

    def get_user(self, user_id: int) -> tuple[User | None, Call]:
        """``GET /users/<id>``; None when the User Service says 404."""
        response, call = self._get(f"/users/{user_id}", allow_404=True)
        if response.status_code == 404:
            return None, call
        return self._user(self._json(response, call), call), call

    def health(self) -> dict[str, Any]:
        """``GET /healthz`` for /internal/status: never raises, reports what happened."""
        started = time.perf_counter()
        report: dict[str, Any] = {"url": f"{self.base_url}/healthz"}
        try:
            response, call = self._get("/healthz", allow_any=True)
        except UpstreamFailure as failure:
            report.update(healthy=False, status=None, error=failure.headline)
        else:
            report.update(
                healthy=response.status_code == 200,
                status=response.status_code,
                error=None if response.status_code == 200 else f"answered {call.status}",
                tls_version=call.tls.version,
                server_dn=call.tls.server_dn,
                reused_connection=call.tls.reused,
            )
        report["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return report

    def _get(
        self, path: str, *, allow_404: bool = False, allow_any: bool = False
    ) -> tuple[requests.Response, Call]:
        url = f"{self.base_url}{path}"
        try:
            response = self.session.get(url, headers={"Accept": "application/json"})
        except (requests.RequestException, UpstreamError) as exc:
            failure = self._classify(exc)
            log.warning("GET %s failed: %s (cause: %s: %s)", url, failure, type(exc).__name__, exc)
            raise failure from exc
        call = Call("GET", url, response.status_code, tls_facts(response))
        if allow_any or response.status_code == 200 or (allow_404 and response.status_code == 404):
            return response, call
        failure = self._refusal(response)
        log.warning("GET %s: %s (body: %.300r)", url, failure, response.text)
        raise failure

    def _classify(self, exc: requests.RequestException | UpstreamError) -> UpstreamFailure:
        """Our answer for an exception from the session, most specific first."""
        if isinstance(exc, ClientCertificateRefusedError):
            return UpstreamFailure(
                502, "The User Service refused our client certificate", _CERT_HINT
            )
        if isinstance(exc, UpstreamIdentityError):
            return UpstreamFailure(
                502, "The User Service could not prove its identity", _IDENTITY_HINT
            )
        if isinstance(exc, UpstreamRedirectError):  # the target URL goes to the log only
            return UpstreamFailure(
                502, "The User Service redirected us to another server", _REDIRECT_HINT
            )
        if isinstance(exc, requests.ConnectTimeout):
            return UpstreamFailure(
                503,
                f"The User Service at {self.base_url} did not accept a connection "
                f"within {self.connect_timeout:g} s",
            )
        if isinstance(exc, requests.ReadTimeout):
            # urllib3 names the timeout that fired; a stalled TLS handshake is
            # read under the connect timeout, not the read timeout.
            fired = _fired_timeout(exc)
            if fired is not None and fired != self.read_timeout:
                return UpstreamFailure(
                    503,
                    f"The User Service at {self.base_url} did not complete the TLS handshake "
                    f"within {fired:g} s",
                )
            return UpstreamFailure(
                503, f"The User Service did not answer within {self.read_timeout:g} s"
            )
        if isinstance(exc, requests.exceptions.SSLError):
            return UpstreamFailure(502, "The TLS handshake with the User Service failed")
        if isinstance(exc, requests.ConnectionError):
            if _refused_to_connect(exc):
                return UpstreamFailure(
                    503,
                    f"The User Service is not reachable at {self.base_url}",
                    "Is it running? `make demo` starts it.",
                )
            return UpstreamFailure(502, "The User Service closed the connection without answering")
        return UpstreamFailure(502, "The call to the User Service failed")

    def _refusal(self, response: requests.Response) -> UpstreamFailure:
        """Status code only, plus the fixed policy message of a 401/403 (module docstring)."""
        status = response.status_code
        if status in (401, 403):
            message = _policy_message_of(response)
            headline = f"The User Service denied access: {status}"
            return UpstreamFailure(
                502, f"{headline} {message}" if message else headline, _CERT_HINT
            )
        if status >= 500:
            return UpstreamFailure(502, f"The User Service failed: {status}")
        return UpstreamFailure(502, f"The User Service answered {status}")

    def _json(self, response: requests.Response, call: Call) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise self._unreadable(call, f"not JSON ({exc})") from exc

    def _user(self, data: Any, call: Call) -> User:
        if not isinstance(data, dict):
            raise self._unreadable(call, "a user is not a JSON object")
        user_id = data.get("id")
        fields = [data.get(name) for name in ("name", "email", "phone")]
        if not isinstance(user_id, int) or not all(isinstance(f, str) for f in fields):
            raise self._unreadable(call, f"a user lacks id/name/email/phone: {sorted(data)}")
        name, email, phone = (str(f) for f in fields)
        return User(user_id, name, email, phone)

    def _unreadable(self, call: Call, why: str) -> UpstreamFailure:
        log.warning("GET %s: unreadable answer: %s", call.url, why)
        return UpstreamFailure(502, "The User Service sent an answer we could not read")


def _refused_to_connect(exc: requests.ConnectionError) -> bool:
    """True when no TCP connection was made at all (refused, unresolvable, unreachable)."""
    reason = getattr(exc.args[0] if exc.args else None, "reason", None)
    return isinstance(reason, NewConnectionError)


def _policy_message_of(response: requests.Response) -> str | None:
    """The fixed ``{"message": ...}`` of a DN policy refusal (mtls.policy), else None."""
    try:
        body = response.json()
    except ValueError:
        return None
    message = body.get("message") if isinstance(body, dict) else None
    return message if message in _POLICY_MESSAGES else None


_FIRED = re.compile(r"read timeout=([0-9.]+)")


def _fired_timeout(exc: BaseException) -> float | None:
    """The seconds urllib3's ReadTimeoutError reports ("(read timeout=3.0)"), if it does."""
    match = _FIRED.search(str(exc))
    return float(match[1]) if match else None
