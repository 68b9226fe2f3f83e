"""A certificate's life after `pki issue`: signed from a CSR, renewed, and listed.

Like `pki.directory`, every ``plan_*`` reads and checks all it needs and
returns a `pki.store.Plan`; nothing is written until the whole plan exists.

`plan_renew` keeps what a peer's policy matches on, the subject DN and the
SANs exactly as they are in NAME.crt, and the profile its EKU says; it
takes the CRL URL, the issuer and "now" from the CA as it is today. It
re-signs the same public key unless ``new_key`` (so a certificate signed
from a CSR renews without the key ever being seen). Short-lived
certificates renewed by a timer are the point: the default lifetime is the
one the certificate being replaced had.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from mtls.dn import format_dn
from mtls.identity import format_serial
from mtls.x509rules import general_names, issued_by, key_matches, key_mismatch
from pki import authority, csr, keys, names, store
from pki.authority import Issued, Window
from pki.directory import RESERVED, CaDir, LeafRequest, add_cert, add_crl, ca_org, leaf_files
from pki.errors import (
    InvalidCsrError,
    InvalidNameError,
    KeyTypeError,
    PasswordError,
    StoreError,
    UnknownCertificateError,
)
from pki.index import dump_index, entry_for
from pki.keys import KeyType, PrivateKey, PublicKey
from pki.lifetime import format_duration


def plan_sign(
    ca: CaDir,
    csr_path: Path,
    request: LeafRequest,
    overrides: csr.Overrides,
    *,
    force: bool = False,
    now: datetime.datetime | None = None,
) -> store.Plan:
    """NAME.crt and NAME-chain.crt for the key in a CSR; see `pki.csr` for what it may ask."""
    _check_stem(request.name)
    source = str(csr_path)
    granted = csr.grant(store.load_csr(csr_path), overrides, source=source)
    global_ca = ca.load_global()
    index = ca.load_index()
    key_file, crt_file, chain_file = leaf_files(request.name)
    stale = [f for f in (key_file, f"{request.name}.p12") if (ca / f).exists()]
    if stale:
        raise StoreError(
            f"{', '.join(str(ca / f) for f in stale)} belong to an earlier certificate of "
            f"{request.name} whose key pki made; a CSR's key lives elsewhere, so remove "
            "them first or sign under another NAME"
        )
    earlier = [e for e in index.entries if e.name == request.name and e.revoked_at is None]
    if ((ca / crt_file).exists() or earlier) and not force:
        raise StoreError(
            f"{request.name} was already issued ({ca / crt_file}); pass --force to sign a new one"
        )
    try:
        name = authority.make_name(
            granted.cn or request.name, ou=granted.ou, o=request.org or ca_org(global_ca)
        )
    except InvalidNameError as exc:
        raise InvalidCsrError(f"{source}: {exc}; or override it with --cn / --ou") from None
    window = Window.starting(now=now, lifetime=_lifetime(request))
    cert = authority.sign_leaf(
        global_ca, granted.public_key, name=name, profile=request.profile, sans=granted.sans,
        window=window, crl_url=index.crl_url,
    )  # fmt: skip
    plan = store.Plan()
    add_cert(plan, ca, request.name, (cert, *authority.chain_above(global_ca)))
    plan.add(ca / "index.json", dump_index(index.add(entry_for(request.name, cert))))
    plan.report += [
        f"signed {request.name} from {source}: {ca / crt_file}, {ca / chain_file}",
        f"  subject {format_dn(cert.subject)}; SAN "
        + ", ".join(csr.describe_san(n) for n in general_names(cert))
        + f"; {request.profile}; serial {format_serial(cert.serial_number)}; "
        f"until {_when(cert.not_valid_after_utc)}",
    ]
    plan.report += [f"  ignored from the CSR: {item}" for item in granted.ignored]
    return plan


@dataclass(frozen=True)
class Renewal:
    name: str
    new_key: bool = False
    #: None: the lifetime of the certificate being replaced.
    lifetime: datetime.timedelta | None = None
    revoke_old: bool = False


def plan_renew(
    ca: CaDir,
    renewal: Renewal,
    *,
    p12_password: bytes | None = None,
    now: datetime.datetime | None = None,
) -> store.Plan:
    """Replace NAME.crt, NAME-chain.crt (and NAME.key with ``new_key``, NAME.p12 if present)."""
    name = renewal.name
    _check_stem(name)
    global_ca = ca.load_global()
    index = ca.load_index()
    key_file, crt_file, chain_file = leaf_files(name)
    old = _current(ca, name, global_ca)
    entry = next((e for e in index.entries if e.serial == old.serial_number), None)
    if entry is not None and entry.revoked_at is not None and not renewal.new_key:
        raise UnknownCertificateError(
            f"{ca / crt_file} (serial {format_serial(old.serial_number)}) was revoked "
            f"({entry.reason}); renewing it would keep a key that may be compromised: "
            "pass --new-key"
        )
    key = _key(ca, name, old, renewal.new_key)
    p12_path = ca / f"{name}.p12"
    if p12_path.exists():
        if key is None:
            raise StoreError(
                f"{p12_path} exists but {ca / key_file} does not; restore the key or "
                "remove the stale .p12"
            )
        _check_p12_password(p12_path, p12_password)
    lifetime = renewal.lifetime or _old_lifetime(old)
    public = key.public_key() if key is not None else _leaf_key(old, ca / crt_file)
    cert = authority.sign_leaf(
        global_ca,
        public,
        name=old.subject,
        profile=authority.profile_of(old),
        sans=general_names(old),
        window=Window.starting(now=now, lifetime=lifetime),
        crl_url=index.crl_url,
    )
    chain = (cert, *authority.chain_above(global_ca))
    plan = store.Plan()
    files = [crt_file, chain_file]
    if renewal.new_key and key is not None:
        plan.add(ca / key_file, store.encode_key(key), mode=store.KEY_MODE)
        files.insert(0, key_file)
    add_cert(plan, ca, name, chain)
    if key is not None and p12_password is not None and p12_path.exists():
        issued = Issued(cert, key, chain[1:])
        p12 = authority.build_p12(issued, p12_password, friendly_name=name)
        plan.add(p12_path, p12, mode=store.KEY_MODE)
        files.append(p12_path.name)
    index = index.add(entry_for(name, cert))
    old_serial = format_serial(old.serial_number)
    plan.report.append(
        f"renewed {name}: serial {old_serial} -> {format_serial(cert.serial_number)}, "
        f"valid {format_duration(lifetime)} until {_when(cert.not_valid_after_utc)}"
        f"{', new key' if renewal.new_key else ', same key'}; wrote "
        + ", ".join(str(ca / f) for f in files)
    )
    if renewal.revoke_old and (entry is None or entry.revoked_at is None):
        when = now or datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        index = index.revoke({old.serial_number}, when, "superseded")
        add_crl(plan, ca, global_ca, index, now=now)
        plan.report.append(
            f"revoked the old serial {old_serial} (superseded); {ca / 'crl.pem'} updated: "
            "servers still presenting it are refused once they reload the CRL"
        )
    else:
        plan.add(ca / "index.json", dump_index(index))
        plan.report.append(
            f"the old serial {old_serial} stays valid until {_when(old.not_valid_after_utc)}; "
            "--revoke-old retires it at once"
        )
    return plan


def _check_stem(name: str) -> None:
    if name in RESERVED:
        raise InvalidNameError(
            f"name {name!r} is the CA's own; sign and renew work on leaves "
            "(a new CA is `pki init --force`)"
        )
    names.check_file_stem(name)


def _lifetime(request: LeafRequest) -> datetime.timedelta:
    return request.valid or datetime.timedelta(days=request.days)


def _current(ca: CaDir, name: str, global_ca: Issued) -> x509.Certificate:
    """NAME.crt as it is now, refused unless this CA's global signed it."""
    path = ca / leaf_files(name)[1]
    if not path.exists():
        raise UnknownCertificateError(
            f"no certificate {name!r} in {ca.path} ({path} does not exist); "
            f"`pki list --dir {ca.path}` shows what was issued, `pki issue {name}` makes one"
        )
    cert = store.load_cert(path)
    if not issued_by(cert, global_ca.cert):
        raise StoreError(
            f"{path} was not issued by this CA's global.crt (its issuer is "
            f"{format_dn(cert.issuer)}); issue a new one with `pki issue {name}`"
        )
    return cert


def _key(ca: CaDir, name: str, old: x509.Certificate, new_key: bool) -> PrivateKey | None:
    """The key the renewed certificate certifies: NAME.key, a new one, or None (CSR-signed)."""
    path = ca / leaf_files(name)[0]
    if not path.exists():
        if new_key:
            raise KeyTypeError(
                f"{name} was signed from a CSR (there is no {path}): pki never saw its key and "
                f"cannot make a new one; send a new CSR to `pki sign --name {name} --force`"
            )
        return None
    if new_key:
        key_type, bits = _key_type(old)
        return keys.generate_key(key_type, bits)
    key = store.load_key(path)
    if not key_matches(key, old):
        fix = "restore the matching key, or pass --new-key"
        raise StoreError(key_mismatch(path, ca / leaf_files(name)[1], old, fix))
    return key


def _key_type(cert: x509.Certificate) -> tuple[KeyType, int]:
    public = cert.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        return "rsa", public.key_size
    if isinstance(public, ed25519.Ed25519PublicKey):
        return "ed25519", 0
    if isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1):
        return "ec", 0
    raise KeyTypeError(
        f"{format_dn(cert.subject)} has a key pki does not generate; renew it without --new-key"
    )


def _leaf_key(cert: x509.Certificate, path: Path) -> PublicKey:
    return keys.check_leaf_key(cert.public_key(), source=str(path))


def _check_p12_password(path: Path, password: bytes | None) -> None:
    """A renewed NAME.p12 needs the password its users know; it must open the current one."""
    if password is None:
        raise PasswordError(
            f"{path} exists and is replaced too, so renew needs its password: pass "
            "--password-file FILE (or set PKI_P12_PASSWORD); pki never stores it"
        )
    data = store.read_bytes(path, what="the PKCS#12 file", fix="")
    try:
        pkcs12.load_key_and_certificates(data, password)
    except ValueError:
        raise PasswordError(
            f"the password given does not open {path}; give the one it was made with "
            "(the renewed file keeps it)"
        ) from None


def _old_lifetime(cert: x509.Certificate) -> datetime.timedelta:
    """What the replaced certificate was issued for: its window minus the back-dating."""
    span = cert.not_valid_after_utc - cert.not_valid_before_utc
    return span - authority.CLOCK_SKEW if span > authority.CLOCK_SKEW else span


def _when(moment: datetime.datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"
