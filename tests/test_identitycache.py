"""mtls.identitycache: a cached identity is exactly the uncached one; the cache stays bounded."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mtls.identity import PeerIdentity, build_tls_environ, connection_environ
from mtls.identitycache import IdentityCache
from pki.authority import Issued, build_intermediate, build_leaf, build_root, make_name

NOW = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)
CONNECTION = {"protocol": "TLSv1.3", "cipher": "TLS_AES_128_GCM_SHA256", "sni": "svc"}


@pytest.fixture(scope="module")
def ca() -> Issued:
    return build_intermediate(build_root(now=NOW), now=NOW)


def client(ca: Issued, cn: str) -> x509.Certificate:
    issued = build_leaf(
        ca, name=make_name(cn, ou="Ops"), profile="client", now=NOW,
        dns=[cn, "b.internal"], ips=["10.1.2.3"], uris=["spiffe://example.org/x"],
    )  # fmt: skip
    return issued.cert


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("resumed", [False, True])
def test_a_cached_certificate_gives_the_environ_and_identity_an_uncached_one_gives(
    ca: Issued, resumed: bool
) -> None:
    cert = client(ca, "a.internal")
    cache = IdentityCache()
    for now in (NOW, NOW + datetime.timedelta(days=40)):  # the second one from the cache
        known = cache.peer(der(cert))
        env = connection_environ(
            **CONNECTION, resumed=resumed, peer=known.cert, certificate=known.environ, now=now
        )
        assert env == build_tls_environ(**CONNECTION, resumed=resumed, peer=cert, now=now)
        assert known.identity == PeerIdentity.from_certificate(cert)
    assert len(cache) == 1


def test_the_days_left_follow_the_clock_not_the_first_connection(ca: Issued) -> None:
    known = IdentityCache().peer(der(client(ca, "a.internal")))
    days = [
        connection_environ(
            **CONNECTION, resumed=False, peer=known.cert, certificate=known.environ, now=now
        )["SSL_CLIENT_V_REMAIN"]
        for now in (NOW, known.cert.not_valid_after_utc + datetime.timedelta(seconds=1))
    ]
    assert days[0] != "0"
    assert days[1] == "0"


def test_the_same_der_is_parsed_once_and_the_least_recent_is_forgotten(ca: Issued) -> None:
    a, b, c = (der(client(ca, f"{n}.internal")) for n in "abc")
    cache = IdentityCache(size=2)
    first = cache.peer(a)
    assert cache.peer(a) is first
    cache.peer(b)
    cache.peer(a)  # a is now the most recent: b goes when c comes
    cache.peer(c)
    assert len(cache) == 2
    assert cache.peer(a) is first
    assert cache.peer(b) is not cache.peer(c)
    assert len(cache) == 2


def test_an_unreadable_certificate_raises_each_time_and_is_not_remembered() -> None:
    cache = IdentityCache()
    for _ in range(2):
        with pytest.raises(ValueError, match="error parsing asn1 value"):
            cache.peer(b"\x16\x03\x01 not a certificate")
    assert len(cache) == 0
