"""mtls.identity against the real thing: OpenSSL prints what mod_ssl would export.

Every DN, serial and date is compared with the `openssl x509` command line
(mod_ssl 2.4 prints SSL_CLIENT_S_DN with ``XN_FLAG_RFC2253 & ~ESC_MSB``,
which is ``-nameopt RFC2253,-esc_msb``), so a mismatch is a real one.
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import time
from typing import Literal

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.name import _ASN1Type  # only way to pick BMP/Universal strings
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from mtls import dn
from mtls.dn import format_dn
from mtls.identity import (
    PEER_ENVIRON_KEY,
    PeerIdentity,
    build_tls_environ,
    format_serial,
    format_time,
    peer_from_der,
    remaining_days,
)
from pki.authority import Issued, build_intermediate, build_leaf, build_root, make_name
from tests.tools import require_tool

NOW = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)
needs_openssl = pytest.mark.usefixtures("openssl_tool")


@pytest.fixture
def openssl_tool() -> str:
    """The comparisons against openssl fail (never skip) when it is missing."""
    return require_tool("openssl")


_KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ca() -> Issued:
    return build_intermediate(build_root(now=NOW), now=NOW)


def leaf(ca: Issued, name: x509.Name, **kwargs: object) -> x509.Certificate:
    kwargs.setdefault("dns", ["client.internal"])
    return build_leaf(ca, name=name, profile="client", now=NOW, **kwargs).cert  # type: ignore[arg-type]


def self_signed(
    name: x509.Name,
    *,
    serial: int = 0x0A1B2C,
    start: datetime.datetime = NOW,
    end: datetime.datetime = NOW + datetime.timedelta(days=30),
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    """For what the authority (rightly) will not issue: odd serials, dates, SAN orders."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(_KEY.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(end)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(_KEY, hashes.SHA256())


def openssl(cert: x509.Certificate, *args: str) -> str:
    pem = cert.public_bytes(serialization.Encoding.PEM)
    out = subprocess.run(["openssl", "x509", "-noout", *args], input=pem, capture_output=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.decode("utf-8").rstrip("\n")


def openssl_dn(cert: x509.Certificate, which: str = "subject") -> str:
    return openssl(cert, f"-{which}", "-nameopt", "RFC2253,-esc_msb").removeprefix(f"{which}=")


def attr(oid: x509.ObjectIdentifier, value: str) -> x509.NameAttribute[str]:
    return x509.NameAttribute(oid, value)


def rdn(*attributes: x509.NameAttribute[str]) -> x509.RelativeDistinguishedName:
    return x509.RelativeDistinguishedName(attributes)


CN, OU, ORG = NameOID.COMMON_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME, NameOID.ORGANIZATION_NAME
DN_CASES = {
    "plain": (
        make_name("homepage.internal", ou="Services"),
        "CN=homepage.internal,OU=Services,O=Example",
    ),
    "escaped comma": (make_name("Smith, John"), "CN=Smith\\, John,O=Example"),
    "multi-valued rdn": (
        x509.Name([rdn(attr(ORG, "Example")), rdn(attr(CN, "svc"), attr(OU, "Ops"))]),
        "OU=Ops+CN=svc,O=Example",  # OpenSSL prints the RDN's attributes last-encoded first
    ),
    "emailAddress": (
        make_name("ops", email="ops@example.com"),
        "emailAddress=ops@example.com,CN=ops,O=Example",
    ),
    "utf-8": (make_name("Jörg Müller 日本 😀"), "CN=Jörg Müller 日本 😀,O=Example"),
    "leading and trailing spaces": (make_name("  padded "), "CN=\\  padded\\ ,O=Example"),
    "hash first": (make_name("#1 fan"), "CN=\\#1 fan,O=Example"),
    "lone hash": (make_name("#"), "CN=#,O=Example"),  # OpenSSL quirk, kept on purpose
    "lone space": (make_name(" "), "CN=\\ ,O=Example"),
    "= and ; inside": (make_name("a=b;c"), "CN=a=b\\;c,O=Example"),
    "quotes, angles, plus, backslash": (make_name('x"<y>+z\\'), 'CN=x\\"\\<y\\>\\+z\\\\,O=Example'),
    "control characters": (make_name("a\x01b\nc\x7f"), "CN=a\\01b\\0Ac\\7F,O=Example"),
    "repeated OU": (
        x509.Name([attr(ORG, "Example"), attr(OU, "one"), attr(OU, "two"), attr(CN, "svc")]),
        "CN=svc,OU=two,OU=one,O=Example",
    ),
    "names OpenSSL spells its own way": (
        x509.Name([attr(NameOID.SERIAL_NUMBER, "42"), attr(NameOID.STREET_ADDRESS, "Main St")]),
        "street=Main St,serialNumber=42",
    ),
    "unknown attribute type is hex-dumped": (
        x509.Name([attr(x509.ObjectIdentifier("1.2.3.4"), "hi"), attr(CN, "svc")]),
        "CN=svc,1.2.3.4=#0C026869",
    ),
    "BMPString and UniversalString": (
        x509.Name(
            [
                x509.NameAttribute(ORG, "Zoë", _ASN1Type.BMPString),
                x509.NameAttribute(CN, "Zoë", _ASN1Type.UniversalString),
            ]
        ),
        "CN=Zoë,O=Zoë",
    ),
    "empty subject": (x509.Name([]), ""),
}


@needs_openssl
@pytest.mark.parametrize(("name", "expected"), DN_CASES.values(), ids=DN_CASES.keys())
def test_subject_dn_is_what_openssl_and_mod_ssl_print(
    ca: Issued, name: x509.Name, expected: str
) -> None:
    cert = leaf(ca, name)
    assert format_dn(cert.subject) == expected
    assert openssl_dn(cert) == expected
    env = build_tls_environ(
        protocol="TLSv1.3", cipher="X", sni=None, resumed=False, peer=cert, now=NOW
    )
    assert env.get("SSL_CLIENT_S_DN", "") == expected  # mod_ssl leaves empty values out


@needs_openssl
def test_every_short_name_in_the_table_is_openssls_spelling() -> None:
    values = {"2.5.4.6": "DE", "1.3.6.1.4.1.311.60.2.1.3": "DE"}  # countries are two letters
    oids = [x509.ObjectIdentifier(dotted) for dotted in dn._SHORT_NAMES]
    cert = self_signed(x509.Name([attr(oid, values.get(oid.dotted_string, "v")) for oid in oids]))
    assert format_dn(cert.subject) == openssl_dn(cert)


@needs_openssl
def test_issuer_dn_is_what_openssl_prints(ca: Issued) -> None:
    cert = leaf(ca, make_name("svc.internal"))
    env = build_tls_environ(
        protocol="TLSv1.3", cipher="X", sni=None, resumed=False, peer=cert, now=NOW
    )
    assert env["SSL_CLIENT_I_DN"] == openssl_dn(cert, "issuer") == "CN=Example Global CA,O=Example"
    assert env["SSL_CLIENT_I_DN_CN"] == "Example Global CA"


_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)
_oids = st.sampled_from([CN, ORG, OU, NameOID.LOCALITY_NAME, NameOID.TITLE, NameOID.SURNAME])


@needs_openssl
@settings(max_examples=20, deadline=None)
@given(st.lists(st.lists(st.tuples(_oids, _text), min_size=1, max_size=3, unique=True), max_size=4))
def test_any_utf8_dn_prints_as_openssl_prints_it(
    rdns: list[list[tuple[x509.ObjectIdentifier, str]]],
) -> None:
    name = x509.Name([rdn(*(attr(oid, value) for oid, value in group)) for group in rdns])
    cert = self_signed(name)
    assert format_dn(cert.subject) == openssl_dn(cert)


@needs_openssl
def test_dn_attribute_variables_follow_mod_ssls_n_rule_and_are_unescaped(ca: Issued) -> None:
    name = x509.Name(
        [
            attr(NameOID.COUNTRY_NAME, "DE"),
            attr(ORG, "Example"),
            attr(OU, "one"),
            attr(OU, "Smith, John"),
            attr(OU, "a\\b\x01"),
            attr(CN, "svc"),
            attr(NameOID.EMAIL_ADDRESS, "ops@example.com"),
            attr(NameOID.SERIAL_NUMBER, "42"),  # not one of mod_ssl's variables
        ]
    )
    cert = leaf(ca, name)
    env = build_tls_environ(
        protocol="TLSv1.3", cipher="X", sni=None, resumed=False, peer=cert, now=NOW
    )
    subject = {
        k.removeprefix("SSL_CLIENT_S_DN_"): v
        for k, v in env.items()
        if k.startswith("SSL_CLIENT_S_DN_")
    }
    assert subject == {
        "C": "DE",
        "O": "Example",
        "OU": "one",  # first in DER order
        "OU_1": "Smith, John",
        "OU_2": "a\\\\b\\01",  # ESC_CTRL still escapes the escape character
        "CN": "svc",
        "Email": "ops@example.com",  # mod_ssl's name for emailAddress
    }
    # The values are OpenSSL's per-attribute print (ESC_CTRL | UTF8_CONVERT), in DER order.
    lines = openssl(cert, "-subject", "-nameopt", "esc_ctrl,utf8,sname,sep_multiline").splitlines()
    printed = [line.strip().split("=", 1)[1] for line in lines[1:]]
    assert printed[:7] == list(subject.values())


@needs_openssl
@pytest.mark.parametrize("serial", [1, 0x7F, 0x80, 0xFF10, 0x0A1B2C, 2**159 - 1])
def test_serial_is_openssls_hex(serial: int) -> None:
    cert = self_signed(make_name("svc"), serial=serial)
    assert format_serial(cert.serial_number) == openssl(cert, "-serial").removeprefix("serial=")


def test_serial_formatting_edges() -> None:
    assert format_serial(0) == "00"
    assert format_serial(0x0A1B2C) == "0A1B2C"
    assert format_serial(-0x80) == "-80"  # i2a_ASN1_INTEGER; RFC 5280 forbids it anyway


@needs_openssl
@pytest.mark.parametrize(
    ("start", "end"),
    [
        (
            datetime.datetime(2027, 2, 6, 3, 4, 5, tzinfo=datetime.UTC),
            datetime.datetime(2027, 12, 31, 23, 59, 59, tzinfo=datetime.UTC),
        ),
        (
            datetime.datetime(2026, 11, 10, 0, 0, 0, tzinfo=datetime.UTC),
            datetime.datetime(2051, 1, 1, 0, 0, 0, tzinfo=datetime.UTC),
        ),
    ],
)
def test_validity_strings_are_openssls(start: datetime.datetime, end: datetime.datetime) -> None:
    cert = self_signed(make_name("svc"), start=start, end=end)
    env = build_tls_environ(
        protocol="TLSv1.3", cipher="X", sni=None, resumed=False, peer=cert, now=NOW
    )
    assert env["SSL_CLIENT_V_START"] == openssl(cert, "-startdate").removeprefix("notBefore=")
    assert env["SSL_CLIENT_V_END"] == openssl(cert, "-enddate").removeprefix("notAfter=")


def test_format_time_pads_the_day_and_reads_naive_times_as_utc(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    moment = datetime.datetime(2027, 2, 6, 3, 4, 5)
    monkeypatch.setenv("TZ", "EST+5")  # astimezone() would read a naive time as local
    time.tzset()
    try:
        assert format_time(moment) == "Feb  6 03:04:05 2027 GMT"
        assert format_time(
            moment.replace(tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
        ) == ("Feb  6 01:04:05 2027 GMT")
    finally:
        monkeypatch.undo()
        time.tzset()


DAY = datetime.timedelta(days=1)
SECOND = datetime.timedelta(seconds=1)


@pytest.mark.parametrize(
    ("left", "expected"),
    [
        (30 * DAY, 31),  # mod_ssl counts one day more than the plain difference
        (30 * DAY - SECOND, 30),
        (DAY, 2),
        (SECOND, 1),
        (datetime.timedelta(0), 1),
        (-SECOND, 0),
        (-3 * DAY, 0),  # never negative
        (DAY - datetime.timedelta(microseconds=500_000), 2),  # mod_ssl floors "now" to seconds
    ],
)
def test_remaining_days_is_computed_as_mod_ssl_does(
    left: datetime.timedelta, expected: int
) -> None:
    not_after = datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC)
    assert remaining_days(not_after, not_after - left) == expected


def test_environ_without_a_client_certificate() -> None:
    env = build_tls_environ(
        protocol="TLSv1.2",
        cipher="ECDHE-RSA-AES256-GCM-SHA384",
        sni=None,
        resumed=False,
        peer=None,
        now=NOW,
    )
    assert env == {
        "HTTPS": "on",
        "SSL_PROTOCOL": "TLSv1.2",
        "SSL_CIPHER": "ECDHE-RSA-AES256-GCM-SHA384",
        "SSL_SESSION_RESUMED": "Initial",
        "SSL_CLIENT_VERIFY": "NONE",
    }


def test_environ_with_a_client_certificate(ca: Issued) -> None:
    cert = leaf(
        ca,
        make_name("homepage.internal", ou="Services"),
        dns=["homepage.internal", "www.homepage.internal"],
        ips=["10.0.0.7", "2001:db8::1"],
        uris=["spiffe://example/homepage"],
        emails=["ops@example.com"],
    )
    env = build_tls_environ(
        protocol="TLSv1.3",
        cipher="TLS_AES_256_GCM_SHA384",
        sni="localhost",
        resumed=True,
        peer=cert,
        now=NOW,
    )
    assert all(isinstance(v, str) for v in env.values())
    assert env["SSL_TLS_SNI"] == "localhost"
    assert env["SSL_SESSION_RESUMED"] == "Resumed"
    assert env["SSL_CLIENT_VERIFY"] == "SUCCESS"
    assert env["SSL_CLIENT_S_DN"] == "CN=homepage.internal,OU=Services,O=Example"
    assert (env["SSL_CLIENT_S_DN_CN"], env["SSL_CLIENT_S_DN_OU"]) == (
        "homepage.internal",
        "Services",
    )
    assert env["SSL_CLIENT_M_VERSION"] == "3"
    assert env["SSL_CLIENT_M_SERIAL"] == format_serial(cert.serial_number)
    assert env["SSL_CLIENT_V_REMAIN"] == "366"  # a 365-day leaf issued at NOW
    assert env["SSL_CLIENT_SAN_DNS_0"] == "homepage.internal"
    assert env["SSL_CLIENT_SAN_DNS_1"] == "www.homepage.internal"
    assert env["SSL_CLIENT_SAN_IPaddr_0"] == "10.0.0.7"
    assert env["SSL_CLIENT_SAN_IPaddr_1"] == "2001:db8::1"
    assert env["SSL_CLIENT_SAN_URI_0"] == "spiffe://example/homepage"
    assert env["SSL_CLIENT_SAN_Email_0"] == "ops@example.com"
    assert x509.load_pem_x509_certificate(env["SSL_CLIENT_CERT"].encode()) == cert


def test_san_numbering_is_per_kind_in_certificate_order() -> None:
    sans: list[x509.GeneralName] = [
        x509.DNSName("a.internal"),
        x509.RFC822Name("x@example.com"),
        x509.DNSName("b.internal"),
        x509.UniformResourceIdentifier("urn:example:svc"),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = self_signed(make_name("svc"), sans=sans)
    env = build_tls_environ(
        protocol="TLSv1.3", cipher="X", sni=None, resumed=False, peer=cert, now=NOW
    )
    san_vars = {k: v for k, v in env.items() if k.startswith("SSL_CLIENT_SAN_")}
    assert san_vars == {
        "SSL_CLIENT_SAN_DNS_0": "a.internal",
        "SSL_CLIENT_SAN_Email_0": "x@example.com",
        "SSL_CLIENT_SAN_DNS_1": "b.internal",
        "SSL_CLIENT_SAN_URI_0": "urn:example:svc",
        "SSL_CLIENT_SAN_IPaddr_0": "::1",
    }


@needs_openssl
@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_key_and_signature_algorithms_use_openssls_long_names(
    ca: Issued, key_type: Literal["ec", "rsa"]
) -> None:
    name = make_name("svc.internal")
    cert = build_leaf(ca, name=name, profile="client", key_type=key_type, now=NOW).cert
    env = build_tls_environ(
        protocol="TLSv1.3", cipher="X", sni=None, resumed=False, peer=cert, now=NOW
    )
    text = openssl(cert, "-text")
    assert f"Public Key Algorithm: {env['SSL_CLIENT_A_KEY']}\n" in text
    assert env["SSL_CLIENT_A_KEY"] == {"ec": "id-ecPublicKey", "rsa": "rsaEncryption"}[key_type]
    assert f"Signature Algorithm: {env['SSL_CLIENT_A_SIG']}\n" in text
    assert env["SSL_CLIENT_A_SIG"] == "ecdsa-with-SHA256"  # signed by the EC global CA


def test_peer_identity_from_certificate(ca: Issued) -> None:
    cert = leaf(ca, make_name("svc.internal", ou="Ops"), dns=["svc.internal"], ips=["10.1.2.3"])
    peer = PeerIdentity.from_certificate(cert)
    assert peer.subject_dn == "CN=svc.internal,OU=Ops,O=Example"
    assert peer.issuer_dn == "CN=Example Global CA,O=Example"
    assert peer.serial == format_serial(cert.serial_number)
    assert peer.not_after == cert.not_valid_after_utc
    assert peer.not_before == cert.not_valid_before_utc
    assert (peer.san_dns, peer.san_ip, peer.san_uri, peer.san_email) == (
        ("svc.internal",),
        ("10.1.2.3",),
        (),
        (),
    )
    assert peer.cert is cert
    assert "BEGIN CERTIFICATE" not in repr(peer)
    with pytest.raises(AttributeError):
        peer.subject_dn = "CN=other"  # type: ignore[misc]
    assert PEER_ENVIRON_KEY == "mtls.peer"


def typed_cn(value: str | bytes, kind: _ASN1Type) -> x509.Name:
    """O=Example, CN of any ASN.1 type. cryptography builds a BIT STRING only for
    x500UniqueIdentifier: made as one, the attribute then gets the CN's type."""
    oid = NameOID.X500_UNIQUE_IDENTIFIER if kind is _ASN1Type.BitString else CN
    attribute = x509.NameAttribute(oid, value, _type=kind)
    object.__setattr__(attribute, "_oid", CN)
    return x509.Name([attr(ORG, "Example"), attribute])


@needs_openssl
def test_a_bit_string_cn_prints_as_openssl_prints_it(ca: Issued) -> None:
    # OpenSSL verifies such a certificate (a CA may sign one); cryptography's
    # cert.subject raises TypeError on it. OCTET STRING or time CNs, OpenSSL
    # refuses to load at all, so they never get past a handshake.
    cert = leaf(ca, typed_cn(b"\x00\xffab", _ASN1Type.BitString), uris=["spiffe://ex.org/odd"])
    peer = peer_from_der(cert.public_bytes(serialization.Encoding.DER))  # no TypeError
    env = build_tls_environ(
        protocol="TLSv1.3", cipher="X", sni=None, resumed=False, peer=peer, now=NOW
    )
    assert env["SSL_CLIENT_S_DN"] == openssl_dn(peer) == "CN=#030400FF6162,O=Example"
    assert PeerIdentity.from_certificate(peer).subject_dn == env["SSL_CLIENT_S_DN"]
    assert env["SSL_CLIENT_I_DN"] == "CN=Example Global CA,O=Example"
    lines = openssl(peer, "-subject", "-nameopt", "esc_ctrl,utf8,sname,sep_multiline")
    assert f"    CN={env['SSL_CLIENT_S_DN_CN']}" in lines.splitlines()  # mod_ssl's unescaped row


def test_peer_from_der_round_trips_and_rejects_garbage(ca: Issued) -> None:
    cert = leaf(ca, make_name("svc.internal"))
    assert peer_from_der(cert.public_bytes(serialization.Encoding.DER)) == cert
    with pytest.raises(ValueError, match="error parsing asn1 value"):
        peer_from_der(b"\x16\x03\x01 not a certificate")


def test_san_values_escape_control_characters_as_mod_ssl_does() -> None:
    cert = self_signed(make_name("svc"), sans=[x509.DNSName("a\x01b"), x509.RFC822Name("x\\y@ex")])
    env = build_tls_environ(
        protocol="TLSv1.3", cipher="X", sni=None, resumed=False, peer=cert, now=NOW
    )
    assert env["SSL_CLIENT_SAN_DNS_0"] == "a\\01b"
    assert env["SSL_CLIENT_SAN_Email_0"] == "x\\\\y@ex"
    assert PeerIdentity.from_certificate(cert).san_dns == ("a\x01b",)  # raw for Python code
