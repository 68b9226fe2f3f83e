"""The X.509 rules the server's start-up and `pki` share: one home each, one wording each.

Pure: certificates, CRLs and the time in; answers and problem sentences out.
mtls.validation (start-up and reload), pki.verify, pki.inspect and pki.store
call these functions rather than deciding the same things their own way:

- ``extension(obj, kind)``: an extension's value or None (no try/except at
  the call sites);
- ``read_sans`` / ``general_names``: the subjectAltName (RFC 5280 4.2.1.6);
- ``is_ca`` / ``is_root`` / ``issued_by``: who may issue (RFC 5280 4.2.1.9);
- ``key_matches`` / ``key_mismatch``: a private key belongs to a certificate;
- ``verify_chain``: the only caller of ``cryptography.x509.verification``
  (its API is marked unstable; when it changes, only this function does);
- ``handshake_problems``: the chain as OpenSSL builds it at each handshake;
- ``crl_problems`` / ``stale_crl``: which CRL may be trusted (RFC 5280 6.3).

Two verdicts, decided here once. ``verify_chain`` is the strict RFC 5280 /
CA-Browser-Forum profile (it refuses, say, an Ed25519 CA or a CA without
keyUsage). OpenSSL, which every client of ours runs, accepts much of that.
``handshake_problems`` names only what OpenSSL refuses too: an issuer it
cannot find, an "intermediate" that is no CA (basicConstraints CA:FALSE:
curl exits 60 with ``invalid CA certificate``), a CA without keyCertSign, a
pathLenConstraint exceeded, an intermediate outside its validity. So:

- at server start-up, a ``handshake_problems`` entry for the server's own
  chain is a refusal (every client would fail), and a refusal by the strict
  verifier alone is a WARNING naming the file and the verifier's reason
  (certificates from another CA keep working with OpenSSL clients);
- ``pki verify`` reports the strict verdict, explained by the
  ``handshake_problems`` entry when there is one.

Deliberately NOT decided here: name constraints, policy OIDs, OCSP, delta
CRLs, and revocation of the CAs themselves.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509 import verification

from mtls.dn import format_dn
from mtls.errors import ChainRefused

Purpose = Literal["client", "server"]
E = TypeVar("E", bound=x509.ExtensionType)

MAX_CHAIN_DEPTH = 8
CRL_FIX = "write a new one with `pki crl --dir DIR`"
KEY_FIX = "give the key written with that certificate (`pki issue NAME` writes NAME.key)"


class HasExtensions(Protocol):
    """Certificates, CRLs, CRL entries and CSRs all carry ``extensions``."""

    @property
    def extensions(self) -> x509.Extensions: ...


def extension(obj: HasExtensions, kind: type[E]) -> E | None:
    """The value of ``obj``'s extension of type ``kind``, or None when it has none."""
    try:
        return obj.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


# --- subjectAltName --------------------------------------------------------------------------


@dataclass(frozen=True)
class Sans:
    """The subjectAltName values by kind, each in certificate order."""

    dns: tuple[str, ...] = ()
    ip: tuple[str, ...] = ()
    uri: tuple[str, ...] = ()
    email: tuple[str, ...] = ()


def general_names(obj: HasExtensions) -> list[x509.GeneralName]:
    """The subjectAltName entries of a certificate or CSR, in order; [] without one."""
    return list(extension(obj, x509.SubjectAlternativeName) or [])


def read_sans(obj: HasExtensions) -> Sans:
    """DNS names, IP addresses (as text), URIs and e-mail addresses; other kinds are skipped."""
    names = general_names(obj)

    def of(kind: type[x509.GeneralName]) -> tuple[str, ...]:
        return tuple(str(n.value) for n in names if isinstance(n, kind))

    return Sans(
        dns=of(x509.DNSName),
        ip=of(x509.IPAddress),
        uri=of(x509.UniformResourceIdentifier),
        email=of(x509.RFC822Name),
    )


# --- who may issue ---------------------------------------------------------------------------


def is_ca(cert: x509.Certificate) -> bool:
    """basicConstraints cA asserted (RFC 5280 4.2.1.9); no extension means not a CA."""
    constraints = extension(cert, x509.BasicConstraints)
    return constraints is not None and constraints.ca


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """``issuer``'s name is ``cert``'s issuer and its key made ``cert``'s signature."""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def is_root(cert: x509.Certificate) -> bool:
    """A self-signed CA: what OpenSSL anchors trust at (we never set X509_V_FLAG_PARTIAL_CHAIN)."""
    return is_ca(cert) and issued_by(cert, cert)


# --- keys ------------------------------------------------------------------------------------


def key_matches(key: PrivateKeyTypes, cert: x509.Certificate) -> bool:
    """The private key is the one ``cert`` certifies: the same SubjectPublicKeyInfo.

    OpenSSL's X509_check_private_key compares the same thing; the client's
    encrypted PEM key is decrypted by OpenSSL only, so mtls.credentials takes
    its KEY_VALUES_MISMATCH as this answer and words it with `key_mismatch`.
    """
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        return key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)
    except (TypeError, ValueError, UnsupportedAlgorithm):
        return False  # a certificate key type cryptography cannot serialise matches nothing


def key_mismatch(key_file: object, cert_file: object, cert: x509.Certificate, fix: str) -> str:
    """The one sentence for a key that is not the certificate's (start-up, client, `pki`)."""
    return (
        f"{key_file} does not match the certificate in {cert_file} ({format_dn(cert.subject)}): "
        f"was one of them replaced without the other? {fix}"
    )


# --- validity --------------------------------------------------------------------------------


def validity_problem(cert: x509.Certificate, now: datetime.datetime) -> str | None:
    """Why ``cert`` is not valid at ``now`` (RFC 5280 4.1.2.5), or None."""
    if now > cert.not_valid_after_utc:
        return f"expired on {day(cert.not_valid_after_utc)}"
    if now < cert.not_valid_before_utc:
        return f"not yet valid: valid from {day(cert.not_valid_before_utc)}"
    return None


def day(moment: datetime.datetime | None) -> str:
    return "never" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S} UTC"


# --- chains ----------------------------------------------------------------------------------


def verify_chain(
    leaf: x509.Certificate,
    *,
    roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate] = (),
    purpose: Purpose,
    now: datetime.datetime,
    subject: x509.DNSName | x509.IPAddress | None = None,
) -> tuple[x509.Certificate, ...]:
    """The strict verifier's chain, leaf first; `ChainRefused` with its reason when none.

    For the server purpose without ``subject``, the leaf's own first DNS or
    IP SAN stands in: the chain and the purpose are checked, the name is not.
    """
    if not roots:
        raise ChainRefused("untrusted chain: no trusted root given")
    builder = verification.PolicyBuilder().store(verification.Store(list(roots))).time(now)
    try:
        if purpose == "client":
            verified = builder.build_client_verifier().verify(leaf, list(intermediates))
            return tuple(verified.chain)
        server = builder.build_server_verifier(subject or _own_subject(leaf))
        return tuple(server.verify(leaf, list(intermediates)))
    except verification.VerificationError as exc:
        raise ChainRefused(
            f"untrusted chain: the strict RFC 5280 verifier refuses it ({exc})"
        ) from None


def _own_subject(leaf: x509.Certificate) -> x509.DNSName | x509.IPAddress:
    for name in general_names(leaf):
        if isinstance(name, x509.DNSName) and not name.value.startswith("*."):
            return name
        if isinstance(name, x509.IPAddress):
            return name
    raise ChainRefused("not usable by a server: no DNS name or IP address in its SAN")


def handshake_problems(
    leaf: x509.Certificate,
    *,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    now: datetime.datetime,
    chain_from: str = "the chain",
    roots_from: str = "the trusted roots",
) -> list[str]:
    """What OpenSSL refuses in the path from ``leaf`` to a root, the way it builds it.

    The issuer is looked up by name and signature (X509_check_issued), first
    among the self-signed roots, then the intermediates; it must then be a CA
    with keyCertSign (RFC 5280 4.2.1.3, 4.2.1.9), within its pathLenConstraint
    and its validity. ``chain_from`` and ``roots_from`` name where the
    intermediates and roots came from, for the fix.
    """
    anchors = [c for c in roots if is_root(c)]
    problems: list[str] = []
    path = [leaf]
    for _depth in range(MAX_CHAIN_DEPTH):
        current = path[-1]
        parent = next((a for a in anchors if issued_by(current, a)), None)
        anchored = parent is not None
        parent = parent or next((c for c in intermediates if issued_by(current, c)), None)
        if parent is current and not anchored:
            problems.append(
                f"untrusted chain: it ends at the root '{format_dn(current.subject)}', which is "
                f"not a root in {roots_from}: trust that root, or issue the certificate from "
                "a trusted one"
            )
            return problems
        if parent is None:
            problems.append(
                f"untrusted chain: '{format_dn(current.subject)}' was issued by "
                f"'{format_dn(current.issuer)}', which is neither in {chain_from} nor a root in "
                f"{roots_from}: append the intermediate to {chain_from}, or trust its root"
            )
            return problems
        problems += _issuer_problems(parent, path, now, chain_from)
        if anchored:
            return problems
        path.append(parent)
    problems.append(f"{chain_from}: the chain is longer than {MAX_CHAIN_DEPTH} certificates")
    return problems


def _issuer_problems(
    issuer: x509.Certificate,
    below: list[x509.Certificate],
    now: datetime.datetime,
    chain_from: str,
) -> list[str]:
    name, child = format_dn(issuer.subject), format_dn(below[-1].subject)
    constraints = extension(issuer, x509.BasicConstraints)
    usage = extension(issuer, x509.KeyUsage)
    if constraints is None or not constraints.ca:
        flag = "CA:FALSE" if constraints else "no basicConstraints"
        return [
            f"'{name}' in {chain_from} is not a CA ({flag}), yet it issued '{child}': every "
            "client refuses this chain (OpenSSL: invalid CA certificate, curl exit 60); put "
            "the real intermediate CA there (`pki init` writes global.crt)"
        ]
    problems = []
    if usage is not None and not usage.key_cert_sign:
        problems.append(
            f"'{name}' in {chain_from} is a CA whose keyUsage lacks keyCertSign, so it "
            f"cannot have issued '{child}'; re-issue the CA with `pki init --force`"
        )
    cas_below = len(below) - 1  # the CAs between this issuer and the leaf (RFC 5280 6.1.4 m)
    if constraints.path_length is not None and cas_below > constraints.path_length:
        problems.append(
            f"'{name}' in {chain_from} allows {constraints.path_length} CA(s) below it "
            f"(pathLenConstraint) but has {cas_below}"
        )
    why = validity_problem(issuer, now)
    if why is not None and not is_root(issuer):
        problems.append(f"intermediate '{name}' in {chain_from} is outside its validity: {why}")
    return problems


# --- CRLs ------------------------------------------------------------------------------------


def crl_problems(
    crl: x509.CertificateRevocationList,
    signers: Sequence[x509.Certificate],
    now: datetime.datetime,
    *,
    signed_by: str = "a CA of this chain",
) -> list[str]:
    """Why ``crl`` cannot be trusted, or []: a CA among ``signers`` signed it, and it is fresh.

    Never a leaf: a CRL "issued" by the server's own certificate, or by a
    root nobody trusts, would satisfy OpenSSL's CRL check for nothing.
    """
    problems = []
    if not any(c.subject == crl.issuer and is_ca(c) and _signed(crl, c) for c in signers):
        problems.append(
            f"the CRL from '{format_dn(crl.issuer)}' is not signed by {signed_by}, so it "
            f"cannot say who is revoked; {CRL_FIX}"
        )
    stale = stale_crl(crl.next_update_utc, now)
    if stale is not None:
        problems.append(stale)
    return problems


def stale_crl(next_update: datetime.datetime | None, now: datetime.datetime) -> str | None:
    """OpenSSL refuses every client once the CRL is past its nextUpdate (fail closed)."""
    if next_update is None:
        return f"the CRL has no nextUpdate; {CRL_FIX}"
    if now > next_update:
        return (
            f"the CRL is past its nextUpdate ({day(next_update)}), so every client is refused "
            "until it is re-signed; refresh it with `pki crl --dir DIR`"
        )
    return None


def crl_number(crl: x509.CertificateRevocationList) -> int | None:
    number = extension(crl, x509.CRLNumber)
    return None if number is None else number.crl_number


def _signed(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False  # a key type that cannot sign (X25519...) or an unknown algorithm
