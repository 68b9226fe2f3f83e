"""Identity rules over a verified peer's names: pure matching, no Flask, no sockets.

One home for what ``require_peer(...)`` (server side, :mod:`mtls.flask`) and
``ClientSettings.server_rules`` (client side, :mod:`mtls.connection`) mean,
so both ends judge a certificate alike. Rules are compiled once, at start-up
(a bad one raises PolicyError naming its setting), then matched per request.

Semantics: every rule kind given must hold (AND); a kind given as a list
holds when any of its entries matches (OR). No rules at all means "any
verified peer".

- ``dn`` / ``issuer_dn``: regex, ``fullmatch`` on the mod_ssl DN strings
  (``SSL_CLIENT_S_DN`` / ``SSL_CLIENT_I_DN``), never a search. Case-sensitive.
- ``cn``: exact, case-sensitive; a subject with more than one CN never
  matches (which one would be meant is ambiguous: fail closed).
- ``ou``: exact, case-sensitive; holds when any of the subject's OUs is listed.
- ``san_dns``: a DNS name, or ``*.`` + a name of at least two labels, the
  ``*`` standing for exactly one whole label (RFC 6125 section 6.4.3: no
  partial-label wildcards, never across a dot, never the bare parent).
  Compared case-insensitively (DNS names are, RFC 4343; RFC 6125 section
  6.4.1). A name with a trailing dot, on either side, never matches: the
  rule is written without it and a certificate's dNSName carries none
  (RFC 5280 section 4.2.1.6), so one that does is not what the rule means.
- ``san_uri``: a SPIFFE ID (https://github.com/spiffe/spiffe/blob/main/
  standards/SPIFFE-ID.md): ``spiffe://`` + a lower-case trust domain + path
  segments of ``[A-Za-z0-9._-]``; in a rule, a segment ``*`` stands for
  exactly one segment, never across ``/``. A peer's URI that is not a valid
  SPIFFE ID (a query, a fragment, percent-encoding, a port, upper case in
  the trust domain, an empty or dot segment) never matches.

Deliberately NOT checked here: whether the chain is valid, expired or
revoked (the handshake's job), IP and e-mail SANs, non-SPIFFE URIs.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from cryptography import x509

from mtls.errors import PolicyError
from mtls.identity import build_tls_environ

#: enforce: a failing rule is a 403. report: it is served, logged and counted (a dry run).
Mode = Literal["enforce", "report"]
MODES: tuple[Mode, ...] = ("enforce", "report")

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"  # RFC 1035 2.3.1 (LDH), lower-cased
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")  # SPIFFE-ID.md 2.1
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")  # SPIFFE-ID.md 2.2
_SPIFFE = "spiffe://"

RuleValue = str | Sequence[str] | None
RegexValue = str | re.Pattern[str] | Sequence[str | re.Pattern[str]] | None


@dataclass(frozen=True)
class PeerNames:
    """What rules look at: a verified certificate's names, as the WSGI environ has them."""

    subject_dn: str
    issuer_dn: str
    cn: tuple[str, ...] = ()
    ou: tuple[str, ...] = ()
    san_dns: tuple[str, ...] = ()
    san_uri: tuple[str, ...] = ()

    @classmethod
    def from_environ(cls, environ: Mapping[str, Any]) -> PeerNames | None:
        """From the worker's mod_ssl keys; None without a verified certificate."""
        if environ.get("SSL_CLIENT_VERIFY") != "SUCCESS":
            return None
        subject = environ.get("SSL_CLIENT_S_DN")
        if not isinstance(subject, str) or not subject:
            return None
        return cls._read(environ)

    @classmethod
    def _read(cls, environ: Mapping[str, Any]) -> PeerNames:
        return cls(
            subject_dn=str(environ.get("SSL_CLIENT_S_DN", "")),
            issuer_dn=str(environ.get("SSL_CLIENT_I_DN", "")),
            cn=_numbered(environ, "SSL_CLIENT_S_DN_CN", first_plain=True),
            ou=_numbered(environ, "SSL_CLIENT_S_DN_OU", first_plain=True),
            san_dns=_numbered(environ, "SSL_CLIENT_SAN_DNS"),
            san_uri=_numbered(environ, "SSL_CLIENT_SAN_URI"),
        )


def names_of_certificate(cert: x509.Certificate) -> PeerNames:
    """A certificate's names exactly as the worker's environ would give them (one reading)."""
    environ = build_tls_environ(
        protocol="", cipher="", sni=None, resumed=False, peer=cert, now=datetime.now(UTC)
    )
    return PeerNames._read(environ)


def _numbered(
    environ: Mapping[str, Any], key: str, *, first_plain: bool = False
) -> tuple[str, ...]:
    """mod_ssl's repeats: ``KEY``, ``KEY_1``, ... (DN parts) or ``KEY_0``, ``KEY_1``, ... (SANs).

    Read on every policed request: the first few key names are spelled
    once (``_key_names``), not formatted per request.
    """
    values: list[str] = []
    for name in _key_names(key, first_plain):
        value = environ.get(name)
        if not isinstance(value, str):
            return tuple(values)
        values.append(value)
    index = len(values)
    while isinstance(value := environ.get(f"{key}_{index}"), str):
        values.append(value)
        index += 1
    return tuple(values)


@functools.cache
def _key_names(key: str, first_plain: bool) -> tuple[str, ...]:
    return tuple(key if first_plain and i == 0 else f"{key}_{i}" for i in range(_SPELLED))


_SPELLED = 8


@dataclass(frozen=True)
class Rules:
    """Compiled rules; build with :func:`compile_rules`. Empty tuples mean "not given"."""

    dn: tuple[re.Pattern[str], ...] = ()
    issuer_dn: tuple[re.Pattern[str], ...] = ()
    cn: frozenset[str] = frozenset()
    ou: frozenset[str] = frozenset()
    san_dns: tuple[str, ...] = ()  # lower case; "*.x.y" or "a.x.y"
    san_uri: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (trust domain, segments)
    mode: Mode = "enforce"
    setting: str = "require_peer"

    def failure(self, peer: PeerNames) -> str | None:
        """None when every given rule holds; else the first that fails, as a log phrase."""
        if self.dn and not any(p.fullmatch(peer.subject_dn) for p in self.dn):
            return f"dn: the subject matches none of {_patterns(self.dn)}"
        if self.issuer_dn and not any(p.fullmatch(peer.issuer_dn) for p in self.issuer_dn):
            return (
                f"issuer_dn: issuer {peer.issuer_dn!r} matches none of {_patterns(self.issuer_dn)}"
            )
        if self.cn and not (len(peer.cn) == 1 and peer.cn[0] in self.cn):
            return f"cn: subject CN {list(peer.cn)} is not exactly one of {sorted(self.cn)}"
        if self.ou and not any(ou in self.ou for ou in peer.ou):
            return f"ou: subject OU {list(peer.ou)} has none of {sorted(self.ou)}"
        if self.san_dns and not any(dns_matches(r, n) for r in self.san_dns for n in peer.san_dns):
            return f"san_dns: DNS names {list(peer.san_dns)} match none of {list(self.san_dns)}"
        if self.san_uri and not any(_uri_matches(r, u) for r in self.san_uri for u in peer.san_uri):
            rules = [_uri_text(r) for r in self.san_uri]
            return f"san_uri: URIs {list(peer.san_uri)} match none of {rules}"
        return None

    def describe(self) -> str:
        """The rules as one phrase, for start-up logs and messages."""
        parts = [f"dn={_patterns(self.dn)}"] if self.dn else []
        parts += [f"issuer_dn={_patterns(self.issuer_dn)}"] if self.issuer_dn else []
        parts += [f"cn={sorted(self.cn)}"] if self.cn else []
        parts += [f"ou={sorted(self.ou)}"] if self.ou else []
        parts += [f"san_dns={list(self.san_dns)}"] if self.san_dns else []
        parts += [f"san_uri={[_uri_text(r) for r in self.san_uri]}"] if self.san_uri else []
        return " ".join(parts) or "any verified certificate"


def compile_rules(
    *,
    dn: RegexValue = None,
    issuer_dn: RegexValue = None,
    cn: RuleValue = None,
    ou: RuleValue = None,
    san_dns: RuleValue = None,
    san_uri: RuleValue = None,
    mode: str = "enforce",
    setting: str = "require_peer",
) -> Rules:
    """Check and compile every rule; one PolicyError lists every problem, naming ``setting``."""
    problems: list[str] = []
    if mode not in MODES:
        problems.append(f"mode={mode!r} is not one of {', '.join(MODES)}")
    dns = _each(san_dns, "san_dns", problems)
    for rule in dns:
        if not _valid_dns_rule(rule):
            problems.append(
                f"san_dns {rule!r} is not a DNS name or '*.' + a name of two labels or more "
                "(no trailing dot, no partial-label wildcard), e.g. *.svc.example.org"
            )
    uris: list[tuple[str, tuple[str, ...]]] = []
    for rule in _each(san_uri, "san_uri", problems):
        parsed = parse_spiffe_id(rule, wildcards=True)
        if parsed is None:
            problems.append(
                f"san_uri {rule!r} is not a SPIFFE ID: spiffe://<lower-case trust domain>/<path>, "
                "segments of [A-Za-z0-9._-] or '*' for exactly one segment, no query or fragment"
            )
        else:
            uris.append(parsed)
    rules = Rules(
        dn=_regexes(dn, "dn", problems),
        issuer_dn=_regexes(issuer_dn, "issuer_dn", problems),
        cn=frozenset(_each(cn, "cn", problems)),
        ou=frozenset(_each(ou, "ou", problems)),
        san_dns=tuple(rule.lower() for rule in dns),
        san_uri=tuple(uris),
        mode=mode if mode in MODES else "enforce",
        setting=setting,
    )
    if problems:
        raise PolicyError(f"{setting}: invalid identity rules:\n  - " + "\n  - ".join(problems))
    return rules


def dns_matches(rule: str, name: str) -> bool:
    """``name`` (a peer's dNSName) against a compiled, lower-case ``san_dns`` rule."""
    name = name.lower()
    if _DNS_NAME.fullmatch(name) is None:
        return False  # a trailing dot, a '*', an empty label, non-ASCII: never
    if rule.startswith("*."):
        label, _, parent = name.partition(".")
        return parent == rule[2:] and bool(label)
    return name == rule


def parse_spiffe_id(uri: str, *, wildcards: bool = False) -> tuple[str, tuple[str, ...]] | None:
    """``(trust domain, path segments)`` of a strict SPIFFE ID, or None.

    With ``wildcards``, a segment may be ``*`` (rules only; a peer's ``*``
    is an invalid SPIFFE ID character and never matches).
    """
    if not uri.startswith(_SPIFFE):
        return None
    domain, slash, path = uri[len(_SPIFFE) :].partition("/")
    if _TRUST_DOMAIN.fullmatch(domain) is None:
        return None
    if not slash:
        return domain, ()
    segments = tuple(path.split("/"))
    for segment in segments:
        if segment in (".", "..") or (
            _SEGMENT.fullmatch(segment) is None and not (wildcards and segment == "*")
        ):
            return None
    return domain, segments


def _uri_matches(rule: tuple[str, tuple[str, ...]], uri: str) -> bool:
    parsed = parse_spiffe_id(uri)
    if parsed is None:
        return False
    (domain, segments), (rule_domain, rule_segments) = parsed, rule
    return (
        domain == rule_domain
        and len(segments) == len(rule_segments)
        and all(want in ("*", got) for want, got in zip(rule_segments, segments, strict=True))
    )


def _uri_text(rule: tuple[str, tuple[str, ...]]) -> str:
    domain, segments = rule
    return _SPIFFE + domain + "".join("/" + s for s in segments)


def _valid_dns_rule(rule: str) -> bool:
    """A name (``localhost`` too), or ``*.`` + a parent of two labels or more (not ``*.org``)."""
    name = rule.lower()
    if name.startswith("*."):
        name = name[2:]
        if "." not in name:
            return False
    return _DNS_NAME.fullmatch(name) is not None


def _each(value: RuleValue, kind: str, problems: list[str]) -> list[str]:
    """A rule value as a list; a bare string is one entry, blanks are refused."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    if not items:
        problems.append(f"{kind} is an empty list (it would deny everybody); leave it out instead")
    good = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            problems.append(f"{kind} entry {item!r} is empty or not a string")
        else:
            good.append(item)
    return good


def _regexes(value: RegexValue, kind: str, problems: list[str]) -> tuple[re.Pattern[str], ...]:
    """Regex rules, compiled here once; an already compiled pattern is taken as is."""
    if value is None:
        return ()
    items = [value] if isinstance(value, (str, re.Pattern)) else list(value)
    compiled = [item for item in items if isinstance(item, re.Pattern)]
    texts = [item for item in items if not isinstance(item, re.Pattern)]
    if texts or not items:
        for item in _each(texts, kind, problems):
            try:
                compiled.append(re.compile(item))
            except re.error as exc:
                problems.append(f"{kind} {item!r} is not a valid regular expression ({exc})")
    return tuple(compiled)


def _patterns(patterns: Iterable[re.Pattern[str]]) -> list[str]:
    return [p.pattern for p in patterns]
