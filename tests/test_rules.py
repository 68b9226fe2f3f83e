"""mtls.rules, table-driven: every rule kind with the matches and the near misses that must fail."""

from __future__ import annotations

from typing import Any

import pytest

from mtls.errors import PolicyError
from mtls.rules import PeerNames, compile_rules

HOMEPAGE_DN = "CN=homepage.internal,OU=Services,O=Example"
ISSUER_DN = "CN=Example Global CA,O=Example"


def peer(**names: Any) -> PeerNames:
    base: dict[str, Any] = {"subject_dn": HOMEPAGE_DN, "issuer_dn": ISSUER_DN}
    base.update({k: tuple(v) if isinstance(v, list) else v for k, v in names.items()})
    return PeerNames(**base)


# (rules, peer names, holds?, why)
# fmt: off
CASES: list[tuple[dict[str, Any], dict[str, Any], bool, str]] = [
    ({}, {}, True, "no rules: any verified peer"),
    ({"dn": r"CN=homepage\.internal,OU=Services,O=Example"}, {}, True, "dn fullmatch"),
    ({"dn": r"CN=homepage\.internal"}, {}, False, "dn prefix is no match (fullmatch)"),
    ({"dn": r"cn=homepage\.internal,OU=Services,O=Example"}, {}, False, "dn is case-sensitive"),
    ({"dn": ["CN=nobody", r"CN=homepage\.internal,.*"]}, {}, True, "dn list: any of"),
    ({"issuer_dn": "CN=Example Global CA,O=Example"}, {}, True, "issuer_dn fullmatch"),
    ({"issuer_dn": "CN=Example Global CA"}, {}, False, "issuer_dn prefix"),
    ({"cn": "homepage.internal"}, {"cn": ["homepage.internal"]}, True, "cn exact"),
    ({"cn": "Homepage.internal"}, {"cn": ["homepage.internal"]}, False, "cn upper case"),
    ({"cn": "homepage"}, {"cn": ["homepage.internal"]}, False, "cn prefix"),
    ({"cn": "a"}, {"cn": ["a", "b"]}, False, "two CNs: ambiguous, never"),
    ({"cn": "a"}, {}, False, "no CN"),
    ({"ou": "Services"}, {"ou": ["Team", "Services"]}, True, "ou: any of the subject's"),
    ({"ou": ["Ops", "Services"]}, {"ou": ["Services"]}, True, "ou list: any of"),
    ({"ou": "services"}, {"ou": ["Services"]}, False, "ou upper case differs"),
    ({"ou": "Services"}, {"ou": ["Services "]}, False, "ou trailing space"),
    ({"san_dns": "api.example.org"}, {"san_dns": ["api.example.org"]}, True, "dns exact"),
    ({"san_dns": "api.example.org"}, {"san_dns": ["API.Example.ORG"]}, True, "dns any case"),
    ({"san_dns": "API.example.org"}, {"san_dns": ["api.example.org"]}, True, "rule any case"),
    ({"san_dns": "*.example.org"}, {"san_dns": ["api.example.org"]}, True, "one label"),
    ({"san_dns": "*.example.org"}, {"san_dns": ["a.b.example.org"]}, False, "two labels"),
    ({"san_dns": "*.example.org"}, {"san_dns": ["example.org"]}, False, "the bare parent"),
    ({"san_dns": "*.example.org"}, {"san_dns": ["evil-example.org"]}, False, "no dot"),
    ({"san_dns": "example.org"}, {"san_dns": ["evil-example.org"]}, False, "suffix"),
    ({"san_dns": "*.example.org"}, {"san_dns": ["api.example.org."]}, False, "trailing dot"),
    ({"san_dns": "api.example.org"}, {"san_dns": ["api.example.org."]}, False, "trailing dot"),
    ({"san_dns": "*.example.org"}, {"san_dns": ["*.example.org"]}, False, "peer wildcard"),
    ({"san_dns": "*.example.org"}, {"san_dns": [".example.org"]}, False, "empty label"),
    ({"san_dns": "*.example.org"}, {"san_dns": ["api.example.org.evil"]}, False, "more"),
    ({"san_dns": "*.example.org"}, {"san_dns": ["x.org", "b.example.org"]}, True, "any SAN"),
    ({"san_dns": "a.example.org"}, {}, False, "no DNS SAN"),
    ({"san_dns": "localhost"}, {"san_dns": ["localhost"]}, True, "one-label name"),
    ({"san_dns": "*.example.org"}, {"san_dns": ["a_b.example.org"]}, False, "not LDH"),
    ({"san_dns": "*.example.org"}, {"san_dns": ["-a.example.org"]}, False, "leading hyphen"),
    ({"san_uri": "spiffe://example.org/ns/a/sa/x"}, {"san_uri": ["spiffe://example.org/ns/a/sa/x"]}, True, "uri exact"),  # noqa: E501
    ({"san_uri": "spiffe://example.org/ns/*/sa/x"}, {"san_uri": ["spiffe://example.org/ns/a/sa/x"]}, True, "one segment"),  # noqa: E501
    ({"san_uri": "spiffe://example.org/ns/*/sa/x"}, {"san_uri": ["spiffe://example.org/ns/a/b/sa/x"]}, False, "never across /"),  # noqa: E501
    ({"san_uri": "spiffe://example.org/ns/*/sa/x"}, {"san_uri": ["spiffe://example.org/ns//sa/x"]}, False, "empty segment"),  # noqa: E501
    ({"san_uri": "spiffe://example.org/ns/*"}, {"san_uri": ["spiffe://example.org/ns/a/sa/x"]}, False, "* is not a prefix"),  # noqa: E501
    ({"san_uri": "spiffe://example.org/ns/a"}, {"san_uri": ["spiffe://example.org/ns/a?x=1"]}, False, "query"),  # noqa: E501
    ({"san_uri": "spiffe://example.org/ns/*"}, {"san_uri": ["spiffe://example.org/ns/a?x=1"]}, False, "query in a * segment"),  # noqa: E501
    ({"san_uri": "spiffe://example.org/ns/*"}, {"san_uri": ["spiffe://example.org/ns/a#f"]}, False, "fragment"),  # noqa: E501
    ({"san_uri": "spiffe://example.org/ns/a"}, {"san_uri": ["spiffe://Example.org/ns/a"]}, False, "upper-case trust domain"),  # noqa: E501
    ({"san_uri": "spiffe://example.org/ns/a"}, {"san_uri": ["spiffe://example.org/ns/A"]}, False, "path is case-sensitive"),  # noqa: E501
    ({"san_uri": "spiffe://example.org/ns/a"}, {"san_uri": ["SPIFFE://example.org/ns/a"]}, False, "upper-case scheme"),  # noqa: E501
    ({"san_uri": "spiffe://example.org/ns/a"}, {"san_uri": ["spiffe://example.org/ns/a/"]}, False, "trailing slash"),  # noqa: E501
    ({"san_uri": "spiffe://example.org/ns/*"}, {"san_uri": ["spiffe://example.org/ns/.."]}, False, "dot segment"),  # noqa: E501
    ({"san_uri": "spiffe://example.org/ns/*"}, {"san_uri": ["spiffe://example.org/ns/%61"]}, False, "percent-encoding"),  # noqa: E501
    ({"san_uri": "spiffe://example.org/ns/a"}, {"san_uri": ["spiffe://example.org:443/ns/a"]}, False, "port"),  # noqa: E501
    ({"san_uri": "spiffe://example.org/ns/a"}, {"san_uri": ["spiffe://evil.org/ns/a"]}, False, "other trust domain"),  # noqa: E501
    ({"san_uri": "spiffe://example.org/ns/a"}, {"san_uri": ["spiffe://example.org.evil/ns/a"]}, False, "longer trust domain"),  # noqa: E501
    ({"san_uri": ["spiffe://example.org/x", "spiffe://example.org/ns/*"]}, {"san_uri": ["spiffe://example.org/ns/b"]}, True, "uri list: any of"),  # noqa: E501
    ({"dn": ".*", "ou": "Services"}, {"ou": ["Services"]}, True, "all kinds hold"),
    ({"dn": ".*", "ou": "Ops"}, {"ou": ["Services"]}, False, "one kind fails: denied"),
    ({"san_dns": "*.example.org", "san_uri": "spiffe://example.org/a"}, {"san_dns": ["a.example.org"]}, False, "AND across kinds"),  # noqa: E501
]
# fmt: on


@pytest.mark.parametrize(("rules", "names", "holds", "why"), CASES, ids=[c[3] for c in CASES])
def test_rule_table(rules: dict[str, Any], names: dict[str, Any], holds: bool, why: str) -> None:
    failure = compile_rules(**rules, setting="TEST").failure(peer(**names))
    assert (failure is None) is holds, f"{why}: {failure}"


def test_a_failure_names_the_rule_kind_and_the_values() -> None:
    rules = compile_rules(dn=".*", san_uri="spiffe://example.org/ns/*/sa/x", setting="TEST")
    failure = rules.failure(peer(san_uri=["spiffe://example.org/ns/a/b/sa/x"]))
    assert failure is not None
    assert failure.startswith("san_uri: ")
    assert "spiffe://example.org/ns/a/b/sa/x" in failure
    assert "ns/*/sa/x" in failure


BAD_RULES: list[tuple[dict[str, Any], str]] = [
    ({"san_dns": "*.org"}, "san_dns '*.org'"),
    ({"san_dns": "*"}, "san_dns '*'"),
    ({"san_dns": "f*o.example.org"}, "partial-label"),
    ({"san_dns": "*.*.example.org"}, "san_dns '*.*.example.org'"),
    ({"san_dns": "api.example.org."}, "trailing dot"),
    ({"san_uri": "https://example.org/a"}, "is not a SPIFFE ID"),
    ({"san_uri": "spiffe://*/a"}, "spiffe://*/a"),
    ({"san_uri": "spiffe://example.org/a/**"}, "a/**"),
    ({"san_uri": "spiffe://example.org/a?b"}, "no query"),
    ({"dn": "CN=(unclosed"}, "not a valid regular expression"),
    ({"cn": []}, "cn is an empty list"),
    ({"ou": ""}, "ou entry '' is empty"),
    ({"mode": "dry-run"}, "mode='dry-run' is not one of enforce, report"),
]


@pytest.mark.parametrize(("rules", "message"), BAD_RULES, ids=[m for _, m in BAD_RULES])
def test_bad_rules_are_refused_at_compile_time_naming_the_setting(
    rules: dict[str, Any], message: str
) -> None:
    with pytest.raises(PolicyError, match=r"^MY_SETTING: invalid identity rules") as info:
        compile_rules(**rules, setting="MY_SETTING")
    assert message in str(info.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(PolicyError) as info:
        compile_rules(san_dns="*.org", san_uri="http://x", mode="x", setting="S")
    assert str(info.value).count("\n  - ") == 3


def test_peer_names_come_from_the_mod_ssl_environ() -> None:
    environ = {
        "SSL_CLIENT_VERIFY": "SUCCESS",
        "SSL_CLIENT_S_DN": "CN=a,OU=Two,OU=One,O=Example",
        "SSL_CLIENT_I_DN": ISSUER_DN,
        "SSL_CLIENT_S_DN_CN": "a",
        "SSL_CLIENT_S_DN_OU": "One",
        "SSL_CLIENT_S_DN_OU_1": "Two",
        "SSL_CLIENT_SAN_DNS_0": "a.example.org",
        "SSL_CLIENT_SAN_URI_0": "spiffe://example.org/a",
        "SSL_CLIENT_SAN_URI_1": "spiffe://example.org/b",
    }
    assert PeerNames.from_environ(environ) == PeerNames(
        subject_dn="CN=a,OU=Two,OU=One,O=Example",
        issuer_dn=ISSUER_DN,
        cn=("a",),
        ou=("One", "Two"),
        san_dns=("a.example.org",),
        san_uri=("spiffe://example.org/a", "spiffe://example.org/b"),
    )
    assert PeerNames.from_environ({**environ, "SSL_CLIENT_VERIFY": "NONE"}) is None
