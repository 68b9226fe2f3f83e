"""Build the CA's objects: keys, root, global (intermediate), leaves, CRLs, PKCS#12.

Pure: no files, no clock unless you omit ``now``. Every certificate is made
to pass the strictest consumers we know of (OpenSSL's ``-x509_strict`` /
Python's ``VERIFY_X509_STRICT``, and ``cryptography.x509.verification``),
which is why each one carries critical basicConstraints, critical keyUsage,
SKI and AKI, and why a leaf always has a subjectAltName.

Builders read top to bottom: ``build_root()`` -> ``build_intermediate(root)``
-> ``build_leaf(global_ca, ...)``. Deliberately NOT done here: name
constraints, policy OIDs, OCSP. Our servers trust exactly one root and
check a CRL file, nothing more.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mtls.x509rules import extension
from pki import names
from pki.errors import InvalidNameError, PasswordError, ValidityError
from pki.keys import (
    KeyType,
    PrivateKey,
    PublicKey,
    generate_ca_key,
    generate_key,
)
from pki.lifetime import format_duration, largest_flag

Profile = Literal["server", "client", "both"]

#: Certificates start this long before "now" so a peer whose clock is a
#: little behind does not see them as not yet valid.
CLOCK_SKEW = datetime.timedelta(minutes=5)

#: CRL reason names as RFC 5280 and OpenSSL spell them. ``unspecified`` maps
#: to None: RFC 5280 5.3.1 says to omit the reasonCode rather than send it.
REASONS: dict[str, x509.ReasonFlags | None] = {
    "unspecified": None,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
}

_NO_USAGE = dict.fromkeys(
    [
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    ],
    False,
)
_EKUS: dict[Profile, list[x509.ObjectIdentifier]] = {
    "server": [ExtendedKeyUsageOID.SERVER_AUTH],
    "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
    "both": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
}


@dataclass(frozen=True)
class Issued:
    """A certificate with its private key, and the intermediates a peer needs to reach the root.

    ``chain`` never holds the root: peers must already trust it, and sending
    it would only invite them to trust whatever root arrives on the wire.
    """

    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def chain_file_certs(self) -> tuple[x509.Certificate, ...]:
        """What NAME-chain.crt holds, in the order TLS sends it: this cert, then its issuers."""
        return (self.cert, *self.chain)


@dataclass(frozen=True)
class RevokedEntry:
    serial: int
    revoked_at: datetime.datetime
    reason: x509.ReasonFlags | None = None


def make_name(
    cn: str, *, ou: str | None = None, o: str | None = "Example", email: str | None = None
) -> x509.Name:
    """Encode O, OU, CN, emailAddress in that order, so the DN prints ``CN=..,OU=..,O=..``.

    RFC 4514 (and mod_ssl's SSL_CLIENT_S_DN) print the last-encoded RDN
    first, and DN policies are written against that string.
    """
    attrs = [(NameOID.ORGANIZATION_NAME, o), (NameOID.ORGANIZATIONAL_UNIT_NAME, ou)]
    attrs += [(NameOID.COMMON_NAME, cn), (NameOID.EMAIL_ADDRESS, email)]
    for label, value in (("common name", cn), ("OU", ou), ("O", o)):
        # RFC 5280's upper bound; an empty value is a typo, not a name.
        if value is not None and not 0 < len(value) <= 64:
            raise InvalidNameError(f"{label} {value!r} must be 1-64 characters")
    if email is not None:
        names.check_email(email)
    try:
        return x509.Name([x509.NameAttribute(oid, v) for oid, v in attrs if v is not None])
    except ValueError as exc:
        raise InvalidNameError(f"subject name for {cn!r} is not valid: {exc}") from None


def build_root(
    *,
    name: x509.Name | None = None,
    key_type: KeyType = "ec",
    now: datetime.datetime | None = None,
    days: int = 3650,
    valid: datetime.timedelta | None = None,
    rsa_bits: int = 2048,
) -> Issued:
    """A self-signed root; ``valid`` (when given) replaces ``days``, as on every builder."""
    key = generate_ca_key(key_type, rsa_bits)
    name = name or make_name("Example Root CA")
    start = _moment(now)
    builder = _base(name, name, key, start - CLOCK_SKEW, start + _lifetime(days, valid))
    builder = _ca_extensions(builder, path_length=None)
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
    cert = builder.add_extension(aki, critical=False).sign(key, hashes.SHA256())
    return Issued(cert, key)


def build_intermediate(
    root: Issued,
    *,
    name: x509.Name | None = None,
    key_type: KeyType = "ec",
    now: datetime.datetime | None = None,
    days: int = 1825,
    valid: datetime.timedelta | None = None,
    crl_url: str | None = None,
    rsa_bits: int = 2048,
) -> Issued:
    """The guide's "global" CA. pathlen 0: it signs leaves only, never another CA.

    ``crl_url`` is where the *root's* CRL would be published; `pki init`
    publishes only the global's CRL and so leaves it out.
    """
    key = generate_ca_key(key_type, rsa_bits)
    start = _moment(now)
    lifetime = _lifetime(days, valid)
    _check_within(root, start, lifetime)
    builder = _base(
        name or make_name("Example Global CA"),
        root.cert.subject,
        key,
        start - CLOCK_SKEW,
        start + lifetime,
    )
    builder = _ca_extensions(builder, path_length=0)
    cert = _issuer_extensions(builder, root, crl_url).sign(root.key, hashes.SHA256())
    return Issued(cert, key, chain_above(root))


def build_leaf(
    issuer: Issued,
    *,
    name: x509.Name,
    profile: Profile,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    uris: Sequence[str] = (),
    emails: Sequence[str] = (),
    days: int = 365,
    valid: datetime.timedelta | None = None,
    key_type: KeyType = "ec",
    now: datetime.datetime | None = None,
    not_before: datetime.datetime | None = None,
    crl_url: str | None = None,
    key: PrivateKey | None = None,
    rsa_bits: int = 2048,
) -> Issued:
    """An end-entity certificate for a service, a client, or both, with a new key by default."""
    sans = names.subject_alt_names(dns=dns, ips=ips, uris=uris, emails=emails)
    window = Window.starting(now=now, not_before=not_before, lifetime=_lifetime(days, valid))
    key = key or generate_key(key_type, rsa_bits)
    cert = sign_leaf(
        issuer, key.public_key(), name=name, profile=profile, sans=sans, window=window,
        crl_url=crl_url,
    )  # fmt: skip
    return Issued(cert, key, chain_above(issuer))


@dataclass(frozen=True)
class Window:
    """A validity period: ``start`` is "now" (or the requested notBefore), before back-dating."""

    start: datetime.datetime
    lifetime: datetime.timedelta
    backdated: bool = True

    @classmethod
    def starting(
        cls,
        *,
        lifetime: datetime.timedelta,
        now: datetime.datetime | None = None,
        not_before: datetime.datetime | None = None,
    ) -> Window:
        """From ``not_before`` exactly, or from ``now`` back-dated by `CLOCK_SKEW`."""
        if not_before is not None:
            return cls(_moment(not_before), lifetime, backdated=False)
        return cls(_moment(now), lifetime)

    @property
    def not_before(self) -> datetime.datetime:
        return self.start - CLOCK_SKEW if self.backdated else self.start

    @property
    def not_after(self) -> datetime.datetime:
        return self.start + self.lifetime


def sign_leaf(
    issuer: Issued,
    public: PublicKey,
    *,
    name: x509.Name,
    profile: Profile,
    sans: Sequence[x509.GeneralName],
    window: Window,
    crl_url: str | None = None,
) -> x509.Certificate:
    """Sign a leaf for a public key whose private half we may never see (`pki sign`, renew).

    Everything but the public key comes from our arguments: the profile sets
    basicConstraints CA:FALSE, keyUsage and EKU, whatever a CSR asked for.
    The SAN defaults to the CN when the CN is a host name (or IP address):
    strict verifiers ignore the CN, and cryptography's client verifier
    requires a SAN even on client certificates.
    """
    if profile not in _EKUS:
        raise ValidityError(f"profile {profile!r} must be one of server, client, both")
    sans = list(sans) or _default_san(name)
    _check_within(issuer, window.start, window.lifetime)
    # RFC 5280 4.2.1.3: keyEncipherment only where the key can encipher (RSA key transport);
    # RFC 8410 5: Ed25519 and ECDSA keys sign, nothing else.
    usage = _key_usage(
        digital_signature=True, key_encipherment=isinstance(public, rsa.RSAPublicKey)
    )
    builder = (
        _base(name, issuer.cert.subject, public, window.not_before, window.not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage(_EKUS[profile]), critical=False)
        # RFC 5280 4.2.1.6: with an empty subject the SAN carries the identity and is critical.
        .add_extension(x509.SubjectAlternativeName(sans), critical=len(name) == 0)
    )
    return _issuer_extensions(builder, issuer, crl_url).sign(issuer.key, hashes.SHA256())


def profile_of(cert: x509.Certificate) -> Profile:
    """The profile a leaf was made with, read back from its EKU (what `pki renew` keeps)."""
    ekus = set(extension(cert, x509.ExtendedKeyUsage) or [])
    for profile, wanted in _EKUS.items():
        if ekus == set(wanted):
            return profile
    raise ValidityError(
        f"certificate {cert.subject.rfc4514_string()} has no pki profile (EKU serverAuth, "
        "clientAuth or both); issue a new one with `pki issue`"
    )


def build_crl(
    issuer: Issued,
    revoked: Sequence[RevokedEntry],
    *,
    now: datetime.datetime | None = None,
    next_update_days: int = 7,
    number: int = 1,
) -> x509.CertificateRevocationList:
    """A CRL over ``revoked``; ``number`` must grow with every CRL the issuer signs."""
    start = _moment(now)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(start)
        .next_update(start + _days(next_update_days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(_aki(issuer), critical=False)
    )
    for entry in revoked:
        item = x509.RevokedCertificateBuilder().serial_number(entry.serial)
        item = item.revocation_date(_moment(entry.revoked_at))
        if entry.reason is not None:
            item = item.add_extension(x509.CRLReason(entry.reason), critical=False)
        builder = builder.add_revoked_certificate(item.build())
    return builder.sign(issuer.key, hashes.SHA256())


def build_p12(issued: Issued, password: bytes, *, friendly_name: str) -> bytes:
    """PKCS#12 with AES-256 and a SHA-256 MAC: what OpenSSL 3, browsers and Java all read.

    There is no default password on purpose; a p12 with an empty one is a
    private key in the clear with extra steps.
    """
    if not password:
        raise PasswordError("a PKCS#12 file needs a non-empty password")
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(50_000)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(password)
    )
    return pkcs12.serialize_key_and_certificates(
        friendly_name.encode(), issued.key, issued.cert, list(issued.chain) or None, encryption
    )


def _moment(now: datetime.datetime | None) -> datetime.datetime:
    if now is None:
        return datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    if now.tzinfo is None:
        raise ValidityError(f"time {now.isoformat()} has no time zone; pass an aware datetime")
    return now.astimezone(datetime.UTC).replace(microsecond=0)


def _days(days: int) -> datetime.timedelta:
    if days <= 0:
        raise ValidityError(f"--days must be a positive number of days, not {days}")
    return datetime.timedelta(days=days)


def _lifetime(days: int, valid: datetime.timedelta | None) -> datetime.timedelta:
    if valid is None:
        return _days(days)
    if valid <= datetime.timedelta(0):
        raise ValidityError(f"a lifetime must be positive, not {valid}")
    return valid


def _check_within(issuer: Issued, start: datetime.datetime, lifetime: datetime.timedelta) -> None:
    """A certificate that outlives its issuer is dead from the issuer's expiry on; refuse it."""
    limit = issuer.cert.not_valid_after_utc
    not_after = start + lifetime
    if not_after > limit:
        fits = largest_flag(limit - start)
        fix = f"use --valid {fits} or less" if fits else "the issuer expires too soon to sign"
        if fits and fits.endswith("d"):
            fix = f"use --days {fits[:-1]} (--valid {fits}) or less"
        raise ValidityError(
            f"a certificate valid for {format_duration(lifetime)} would expire on "
            f"{not_after:%Y-%m-%d %H:%M:%S} UTC, after its issuer "
            f"{issuer.cert.subject.rfc4514_string()} (notAfter {limit:%Y-%m-%d %H:%M:%S} UTC); "
            f"{fix}, or replace the CA with `pki init --force`"
        )


def chain_above(issuer: Issued) -> tuple[x509.Certificate, ...]:
    """What a certificate signed by ``issuer`` sends along: issuer and its chain, never a root."""
    if issuer.cert.issuer == issuer.cert.subject:
        return issuer.chain
    return (issuer.cert, *issuer.chain)


def _default_san(name: x509.Name) -> list[x509.GeneralName]:
    cns = [str(a.value) for a in name.get_attributes_for_oid(NameOID.COMMON_NAME)]
    for cn in cns[-1:]:
        if names.is_ip_address(cn):
            return [x509.IPAddress(names.parse_ip(cn))]
        if names.is_dns_name(cn):
            return [x509.DNSName(cn.lower())]
    raise InvalidNameError(
        f"certificate for {name.rfc4514_string() or 'an empty subject'} needs a subjectAltName "
        "and its CN is not a host name: give one with --dns, --ip, --uri or --email"
    )


def _base(
    subject: x509.Name,
    issuer: x509.Name,
    key: PrivateKey | PublicKey,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.CertificateBuilder:
    public = key if isinstance(key, PublicKey) else key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )


def _ca_extensions(
    builder: x509.CertificateBuilder, path_length: int | None
) -> x509.CertificateBuilder:
    usage = _key_usage(key_cert_sign=True, crl_sign=True)
    return builder.add_extension(
        x509.BasicConstraints(ca=True, path_length=path_length), critical=True
    ).add_extension(usage, critical=True)


def _issuer_extensions(
    builder: x509.CertificateBuilder, issuer: Issued, crl_url: str | None
) -> x509.CertificateBuilder:
    builder = builder.add_extension(_aki(issuer), critical=False)
    if crl_url is None:
        return builder
    url = names.check_url(crl_url, what="CRL URL")
    point = x509.DistributionPoint([x509.UniformResourceIdentifier(url)], None, None, None)
    return builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)


def _aki(issuer: Issued) -> x509.AuthorityKeyIdentifier:
    ski = extension(issuer.cert, x509.SubjectKeyIdentifier)
    if ski is None:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _key_usage(**usages: bool) -> x509.KeyUsage:
    return x509.KeyUsage(**{**_NO_USAGE, **usages})
