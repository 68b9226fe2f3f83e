"""Certificate signing requests: what a CSR asks for, and the little of it `pki sign` takes.

Pure. A CSR is a wish list signed by a key we will never see (it stays in
an HSM, on another host, in a Kubernetes secret). Its signature proves only
that whoever made it holds the key (RFC 2986 section 3); everything else in
it is a claim. So `pki sign` takes from a CSR:

- the public key, if its signature verifies and the key is one strict peers
  accept (`pki.authority.check_leaf_key`);
- the subject's CN and OU, and the DNS, IP, URI and e-mail SANs, each only
  if it passes the very checks `pki issue` applies to its flags, and each
  replaced by the matching flag (``--cn``, ``--ou``; any of ``--dns --ip
  --uri --email`` replaces all the SANs).

Deliberately NOT taken: any other subject attribute (O is the CA's, or
``--org``, as for `pki issue`), and every extension but the SAN
(basicConstraints, keyUsage, EKU... the profile flags decide those). They
are listed back to the operator as ignored, never copied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.oid import NameOID

from mtls.dn import format_dn
from mtls.x509rules import general_names
from pki import names
from pki.errors import InvalidCsrError, InvalidNameError
from pki.keys import PublicKey, check_leaf_key

#: The SAN types `pki issue` makes, by the flag that makes them.
_SAN_FLAGS: dict[type[x509.GeneralName], str] = {
    x509.DNSName: "dns",
    x509.IPAddress: "ip",
    x509.UniformResourceIdentifier: "uri",
    x509.RFC822Name: "email",
}
_SAN_PREFIX: dict[type[x509.GeneralName], str] = {
    x509.DNSName: "DNS",
    x509.IPAddress: "IP",
    x509.UniformResourceIdentifier: "URI",
    x509.RFC822Name: "email",
}


@dataclass(frozen=True)
class Overrides:
    """The flags of `pki sign`; None / empty means "take it from the CSR"."""

    cn: str | None = None
    ou: str | None = None
    dns: Sequence[str] = ()
    ips: Sequence[str] = ()
    uris: Sequence[str] = ()
    emails: Sequence[str] = ()

    @property
    def sets_sans(self) -> bool:
        return bool(self.dns or self.ips or self.uris or self.emails)


@dataclass(frozen=True)
class Granted:
    """What will go into the certificate, and what the CSR asked for that will not."""

    public_key: PublicKey
    cn: str | None
    ou: str | None
    sans: list[x509.GeneralName]
    ignored: list[str] = field(default_factory=list)


def check_signature(csr: x509.CertificateSigningRequest, *, source: str) -> None:
    if not csr.is_signature_valid:
        raise InvalidCsrError(
            f"{source}: the CSR's signature does not verify against its own public key "
            "(altered or corrupted after it was made); make a new CSR with the key"
        )


def grant(csr: x509.CertificateSigningRequest, overrides: Overrides, *, source: str) -> Granted:
    """Check the CSR and decide, field by field, what it gets; raise naming ``source``."""
    check_signature(csr, source=source)
    public = check_leaf_key(csr.public_key(), source=source)
    ignored: list[str] = []
    cn = overrides.cn or _single(csr.subject, NameOID.COMMON_NAME, "CN", source, ignored)
    ou = overrides.ou or _single(
        csr.subject, NameOID.ORGANIZATIONAL_UNIT_NAME, "OU", source, ignored
    )
    taken = {NameOID.COMMON_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME}
    ignored += [f"subject {attr.rfc4514_string()}" for attr in csr.subject if attr.oid not in taken]
    requested = general_names(csr)
    if overrides.sets_sans:
        sans = names.subject_alt_names(
            dns=overrides.dns, ips=overrides.ips, uris=overrides.uris, emails=overrides.emails
        )
        ignored += [f"SAN {describe_san(n)} (replaced by the flags)" for n in requested]
    else:
        sans = _checked_sans(requested, source)
    ignored += [
        f"extension {describe_extension(ext)}"
        for ext in csr.extensions
        if not isinstance(ext.value, x509.SubjectAlternativeName)
    ]
    return Granted(public, cn, ou, sans, ignored)


def describe_san(name: x509.GeneralName) -> str:
    """``DNS:host``, ``IP:127.0.0.1``, ``URI:spiffe://..``, ``email:a@b``: OpenSSL's spelling."""
    return f"{_SAN_PREFIX.get(type(name), type(name).__name__)}:{name.value}"


def describe_extension(ext: x509.Extension[x509.ExtensionType]) -> str:
    value = ext.value
    if isinstance(value, x509.BasicConstraints):
        return f"basicConstraints CA:{'TRUE' if value.ca else 'FALSE'}"
    label = type(value).__name__
    if isinstance(value, x509.UnrecognizedExtension):
        label = f"OID {ext.oid.dotted_string}"
    return label[0].lower() + label[1:]


def describe_subject(csr: x509.CertificateSigningRequest) -> str:
    return format_dn(csr.subject) or "(empty)"


def _single(
    subject: x509.Name, oid: x509.ObjectIdentifier, label: str, source: str, ignored: list[str]
) -> str | None:
    values = [str(a.value) for a in subject.get_attributes_for_oid(oid)]
    if len(values) > 1:
        raise InvalidCsrError(
            f"{source}: the CSR's subject has {len(values)} {label}s ({', '.join(values)}); "
            f"pass --{label.lower()} to choose one"
        )
    return values[0] if values else None


def _checked_sans(requested: list[x509.GeneralName], source: str) -> list[x509.GeneralName]:
    by_flag: dict[str, list[str]] = {flag: [] for flag in _SAN_FLAGS.values()}
    for san in requested:
        flag = _SAN_FLAGS.get(type(san))
        if flag is None:
            raise InvalidCsrError(
                f"{source}: the CSR asks for a SAN pki does not issue ({san!r}); "
                "set the SANs yourself with --dns, --ip, --uri or --email"
            )
        by_flag[flag].append(str(san.value))
    try:
        return names.subject_alt_names(
            dns=by_flag["dns"], ips=by_flag["ip"], uris=by_flag["uri"], emails=by_flag["email"]
        )
    except InvalidNameError as exc:
        raise InvalidCsrError(
            f"{source}: the CSR's subjectAltName is not acceptable: {exc}; or replace it with "
            "--dns, --ip, --uri or --email"
        ) from None
