"""pki.authority, pki.names, pki.index and pki.verify as pure functions: objects in, objects out."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mtls.dn import format_dn
from pki import authority, index, names, verify
from pki.authority import Issued
from pki.errors import (
    CertificateRefused,
    InvalidNameError,
    PasswordError,
    StoreError,
    UnknownCertificateError,
    ValidityError,
)

NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
DAY = datetime.timedelta(days=1)


@pytest.fixture(scope="module")
def root() -> Issued:
    return authority.build_root(now=NOW)


@pytest.fixture(scope="module")
def global_ca(root: Issued) -> Issued:
    return authority.build_intermediate(root, now=NOW, crl_url="http://crl.example/root.crl")


def ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension:  # type: ignore[type-arg]
    return cert.extensions.get_extension_for_class(kind)


def leaf(issuer: Issued, cn: str = "svc.internal", **kwargs: object) -> Issued:
    kwargs.setdefault("profile", "client")
    kwargs.setdefault("now", NOW)
    return authority.build_leaf(issuer, name=authority.make_name(cn), **kwargs)  # type: ignore[arg-type]


def test_root_is_a_self_signed_ca_with_critical_constraints_and_ten_years(root: Issued) -> None:
    cert = root.cert
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca
    assert bc.value.path_length is None
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign
    assert ku.value.crl_sign
    assert not ku.value.digital_signature
    ski = ext(cert, x509.SubjectKeyIdentifier).value.digest
    assert ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ski
    assert cert.issuer == cert.subject
    assert cert.not_valid_after_utc - NOW == 3650 * DAY
    assert NOW - cert.not_valid_before_utc == authority.CLOCK_SKEW
    assert isinstance(root.key, ec.EllipticCurvePrivateKey)
    assert root.key.curve.name == "secp256r1"
    assert root.chain == ()


def test_global_has_pathlen_zero_and_points_at_the_root(root: Issued, global_ca: Issued) -> None:
    cert = global_ca.cert
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca
    assert bc.value.path_length == 0
    assert ext(cert, x509.KeyUsage).critical
    root_ski = ext(root.cert, x509.SubjectKeyIdentifier).value.digest
    assert ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == root_ski
    assert cert.issuer == root.cert.subject
    assert cert.not_valid_after_utc - NOW == 1825 * DAY
    assert global_ca.chain == (), "the chain never carries the root"
    points = ext(cert, x509.CRLDistributionPoints).value
    assert points[0].full_name == [x509.UniformResourceIdentifier("http://crl.example/root.crl")]


@pytest.mark.parametrize(
    ("profile", "ekus"),
    [
        ("server", [ExtendedKeyUsageOID.SERVER_AUTH]),
        ("client", [ExtendedKeyUsageOID.CLIENT_AUTH]),
        ("both", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
    ],
)
def test_leaf_profile_sets_the_eku_and_a_strict_end_entity_profile(
    global_ca: Issued, profile: authority.Profile, ekus: list[x509.ObjectIdentifier]
) -> None:
    issued = leaf(global_ca, profile=profile)
    cert = issued.cert
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == ekus
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical
    assert not bc.value.ca
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature
    assert not ku.value.key_encipherment
    assert not ku.value.key_cert_sign
    global_ski = ext(global_ca.cert, x509.SubjectKeyIdentifier).value.digest
    assert ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == global_ski
    assert ext(cert, x509.SubjectKeyIdentifier).value.digest
    assert issued.chain == (global_ca.cert,)
    assert issued.chain_file_certs == (cert, global_ca.cert)


def test_leaf_san_defaults_to_a_cn_that_is_a_host_name(global_ca: Issued) -> None:
    cert = leaf(global_ca, "Ops.Internal").cert
    san = ext(cert, x509.SubjectAlternativeName)
    assert list(san.value) == [x509.DNSName("ops.internal")]
    assert not san.critical


def test_leaf_san_defaults_to_a_cn_that_is_an_ip_address(global_ca: Issued) -> None:
    cert = leaf(global_ca, "10.0.0.7").cert
    assert list(ext(cert, x509.SubjectAlternativeName).value) == [
        x509.IPAddress(names.parse_ip("10.0.0.7"))
    ]


def test_leaf_without_usable_san_is_refused_with_the_fix(global_ca: Issued) -> None:
    with pytest.raises(
        InvalidNameError, match=r"CN=Alice Smith,O=Example needs a subjectAlt.*--dns"
    ):
        leaf(global_ca, "Alice Smith")


def test_leaf_keeps_given_sans_in_order_without_duplicates(global_ca: Issued) -> None:
    cert = leaf(
        global_ca,
        profile="server",
        dns=["a.example", "*.b.example", "a.example"],
        ips=["::1"],
        uris=["spiffe://example.org/svc"],
        emails=["ops@example.org"],
    ).cert
    assert [str(n.value) for n in ext(cert, x509.SubjectAlternativeName).value] == [
        "a.example",
        "*.b.example",
        "::1",
        "spiffe://example.org/svc",
        "ops@example.org",
    ]


def test_leaf_serials_are_random_positive_and_fit_in_20_bytes(global_ca: Issued) -> None:
    serials = {leaf(global_ca).cert.serial_number for _ in range(5)}
    assert len(serials) == 5
    assert all(0 < s < 2**159 for s in serials)


def test_rsa_leaf_also_allows_key_encipherment(global_ca: Issued) -> None:
    issued = leaf(global_ca, key_type="rsa")
    assert isinstance(issued.key, rsa.RSAPrivateKey)
    assert issued.key.key_size == 2048
    ku = ext(issued.cert, x509.KeyUsage).value
    assert ku.digital_signature
    assert ku.key_encipherment


def test_leaf_accepts_any_subject_name_escaped_multivalued_email_or_empty(
    global_ca: Issued,
) -> None:
    name = x509.Name(
        [
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Ex")]),
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, "Doe, John"),
                    x509.NameAttribute(NameOID.USER_ID, "jdoe"),
                ]
            ),
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(NameOID.EMAIL_ADDRESS, "jdoe@example.org")]
            ),
        ]
    )
    cert = authority.build_leaf(
        global_ca, name=name, profile="client", emails=["jdoe@example.org"], now=NOW
    ).cert
    assert cert.subject == name
    assert format_dn(cert.subject).startswith("emailAddress=jdoe@example.org,")
    assert r"CN=Doe\, John" in format_dn(cert.subject)
    empty = authority.build_leaf(
        global_ca, name=x509.Name([]), profile="client", uris=["spiffe://x/y"], now=NOW
    ).cert
    assert ext(empty, x509.SubjectAlternativeName).critical, "RFC 5280: empty subject"


def test_make_name_prints_most_specific_first() -> None:
    name = authority.make_name("homepage.internal", ou="Services", email="a@example.org")
    assert (
        format_dn(name) == "emailAddress=a@example.org,CN=homepage.internal,OU=Services,O=Example"
    )
    with pytest.raises(InvalidNameError, match="common name '' must be 1-64 characters"):
        authority.make_name("")


def test_leaf_not_before_sets_a_future_start(global_ca: Issued) -> None:
    start = NOW + 10 * DAY
    cert = leaf(global_ca, not_before=start, days=30).cert
    assert cert.not_valid_before_utc == start
    assert cert.not_valid_after_utc == start + 30 * DAY


def test_leaf_that_would_outlive_its_issuer_is_refused_with_the_longest_allowed(
    global_ca: Issued,
) -> None:
    with pytest.raises(ValidityError, match=r"after its issuer CN=Example Global CA.*--days 1825"):
        leaf(global_ca, days=1826)


@pytest.mark.parametrize("days", [0, -3])
def test_non_positive_days_are_refused(global_ca: Issued, days: int) -> None:
    with pytest.raises(ValidityError, match=f"positive number of days, not {days}"):
        leaf(global_ca, days=days)


def test_naive_now_is_refused(global_ca: Issued) -> None:
    with pytest.raises(ValidityError, match="has no time zone"):
        authority.build_root(now=datetime.datetime(2030, 1, 1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dns": ["bad_name"]}, "DNS name 'bad_name' has an invalid label 'bad_name'"),
        ({"dns": ["-x.example"]}, "invalid label '-x'"),
        ({"dns": ["a.example."]}, "without a trailing dot"),
        ({"dns": ["*.com"]}, r"invalid label '\*'"),
        ({"dns": ["ex\u00e4mple.org"]}, "give its IDNA form"),
        ({"dns": ["10.1.2.3"]}, "is an IP address; pass it with --ip"),
        ({"ips": ["300.1.1.1"]}, "IP address '300.1.1.1' is not an IPv4 or IPv6 address"),
        ({"uris": ["no scheme"]}, "must be ASCII without spaces"),
        ({"uris": ["/just/a/path"]}, "needs a scheme"),
        ({"emails": ["nobody"]}, "must look like name@example.org"),
        ({"crl_url": "ftp://x/crl"}, "must be an http:// or https:// URL"),
    ],
)
def test_bad_names_are_refused_before_signing(
    global_ca: Issued, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidNameError, match=message):
        leaf(global_ca, **kwargs)


@pytest.mark.parametrize("stem", ["homepage", "a", "svc-1.v2_x"])
def test_safe_file_stems_pass(stem: str) -> None:
    assert names.check_file_stem(stem) == stem


@pytest.mark.parametrize("stem", ["", "Bad", "../x", "-x", "a/b", "a b", "x" * 65])
def test_unsafe_file_stems_are_refused(stem: str) -> None:
    with pytest.raises(InvalidNameError, match="is not a safe file name"):
        names.check_file_stem(stem)


def test_crl_lists_reasons_has_number_aki_and_is_signed_by_global(global_ca: Issued) -> None:
    revoked = [
        authority.RevokedEntry(5, NOW - DAY, x509.ReasonFlags.key_compromise),
        authority.RevokedEntry(7, NOW - DAY, None),
    ]
    crl = authority.build_crl(global_ca, revoked, now=NOW, next_update_days=3, number=42)
    assert crl.issuer == global_ca.cert.subject
    assert crl.next_update_utc == NOW + 3 * DAY
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 42
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(global_ca.cert, x509.SubjectKeyIdentifier).value.digest
    assert crl.is_signature_valid(global_ca.cert.public_key())  # type: ignore[arg-type]
    first = crl.get_revoked_certificate_by_serial_number(5)
    assert first is not None
    reason = first.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise
    second = crl.get_revoked_certificate_by_serial_number(7)
    assert second is not None
    assert len(second.extensions) == 0, "unspecified is sent as no reasonCode (RFC 5280 5.3.1)"


def test_p12_round_trips_with_its_password_only(global_ca: Issued) -> None:
    issued = leaf(global_ca)
    blob = authority.build_p12(issued, b"s3cret", friendly_name="svc")
    loaded = pkcs12.load_pkcs12(blob, b"s3cret")
    assert loaded.cert is not None
    assert loaded.cert.certificate == issued.cert
    assert loaded.cert.friendly_name == b"svc"
    assert [c.certificate for c in loaded.additional_certs] == [global_ca.cert]
    with pytest.raises(ValueError, match="Invalid password"):
        pkcs12.load_pkcs12(blob, b"wrong")
    with pytest.raises(PasswordError, match="non-empty password"):
        authority.build_p12(issued, b"", friendly_name="svc")


def test_verify_chain_accepts_each_profile_for_its_purpose_only(
    root: Issued, global_ca: Issued
) -> None:
    server = leaf(global_ca, profile="server", dns=["svc.internal"]).cert
    chain = verify.verify_chain(
        server, roots=[root.cert], intermediates=[global_ca.cert], purpose="server"
    )
    assert chain == (server, global_ca.cert, root.cert)
    with pytest.raises(CertificateRefused, match=r"wrong purpose: not valid for client use"):
        verify.verify_chain(server, roots=[root.cert], intermediates=[global_ca.cert])


def test_verify_chain_names_expiry_before_anything_else(root: Issued, global_ca: Issued) -> None:
    old = leaf(global_ca, now=NOW - 100 * DAY, days=10).cert
    with pytest.raises(CertificateRefused, match=r"^expired on \d{4}-\d\d-\d\d"):
        verify.verify_chain(old, roots=[root.cert], intermediates=[global_ca.cert])


def test_verify_chain_without_the_intermediate_is_untrusted(
    root: Issued, global_ca: Issued
) -> None:
    cert = leaf(global_ca).cert
    with pytest.raises(
        CertificateRefused,
        match=r"^untrusted chain: .* was issued by 'CN=Example Global CA,O=Example'",
    ):
        verify.verify_chain(cert, roots=[root.cert])


def test_revocation_check_refuses_a_crl_from_another_issuer(
    root: Issued, global_ca: Issued
) -> None:
    cert = leaf(global_ca).cert
    foreign = authority.build_crl(root, [], now=NOW)
    with pytest.raises(CertificateRefused, match="is not signed by the leaf's issuer"):
        verify.check_revocation(cert, global_ca.cert, foreign, now=NOW)


def test_index_finds_by_name_or_any_serial_spelling(global_ca: Issued) -> None:
    cert = leaf(global_ca).cert
    idx = index.Index().add(index.entry_for("svc", cert))
    hex_serial = f"{cert.serial_number:x}"
    assert idx.find("svc")[0].serial == cert.serial_number
    assert idx.find(hex_serial.upper())[0].serial == cert.serial_number
    assert idx.find(":".join(hex_serial[i : i + 2] for i in range(0, len(hex_serial), 2)))
    assert index.parse_index(index.dump_index(idx), source="i.json") == idx
    revoked = idx.revoke({cert.serial_number}, NOW, "superseded")
    with pytest.raises(UnknownCertificateError, match="svc is already revoked"):
        revoked.find("svc")
    with pytest.raises(UnknownCertificateError, match="no certificate named or with serial 'x'"):
        idx.find("x")


def test_garbled_index_names_the_file() -> None:
    with pytest.raises(StoreError, match=r"^ca/index.json is not a pki index"):
        index.parse_index(b"{not json", source="ca/index.json")


def test_every_bad_san_is_reported_in_one_error(global_ca: Issued) -> None:
    with pytest.raises(InvalidNameError) as error:
        leaf(global_ca, dns=["ok.example", "bad_one"], ips=["1.2.3"], emails=["x"])
    assert str(error.value).split("; ") == [
        "DNS name 'bad_one' has an invalid label 'bad_one': labels are 1-63 of a-z, 0-9 and '-',"
        " not starting or ending with '-'",
        "IP address '1.2.3' is not an IPv4 or IPv6 address (e.g. 127.0.0.1 or ::1)",
        "e-mail address 'x' must look like name@example.org (ASCII only)",
    ]


@pytest.mark.parametrize(("kwargs", "label"), [({"ou": ""}, "OU ''"), ({"o": "x" * 65}, "O 'xxx")])
def test_name_attributes_must_be_1_to_64_characters(kwargs: dict[str, str], label: str) -> None:
    with pytest.raises(InvalidNameError, match=f"^{label}.* must be 1-64 characters$"):
        authority.make_name("svc", **kwargs)
