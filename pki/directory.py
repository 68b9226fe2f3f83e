"""A CA directory and what the commands do to it: init, issue, revoke, re-sign the CRL.

Each command is a ``plan_*`` function that reads and checks everything it
needs, builds every object in memory and returns a `Plan` of files to write.
Nothing here writes; `Plan.commit()` does, once the whole plan exists. The
file names are the guide's: root.crt/key, global.crt/key, crl.pem, and
NAME.key, NAME.crt, NAME-chain.crt (leaf + global, never the root), NAME.p12.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from mtls.identity import format_serial
from pki import authority, keys, names, store
from pki.authority import Issued, Profile
from pki.errors import InvalidNameError, StoreError
from pki.index import Index, dump_index, entry_for
from pki.keys import KeyType

CA_FILES = ("root.crt", "root.key", "global.crt", "global.key")
#: Names whose files would overwrite the CA's own (and the demo's rogue root, rogue-ca.crt).
RESERVED = frozenset({"root", "global", "crl", "index", "rogue-ca"})
#: NAME-chain.crt is NAME's: a leaf named X-chain would write X-chain.crt over X's chain.
CHAIN_SUFFIX = "-chain"
CRL_DAYS = 7
ROOT_DAYS = 3650
GLOBAL_DAYS = 1825


@dataclass(frozen=True)
class CaDir:
    path: Path

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def has_ca(self) -> list[str]:
        return [f for f in CA_FILES if (self / f).exists()]

    def load_global(self) -> Issued:
        """The signing CA. The root key is not needed: it can stay offline after `pki init`."""
        missing = [f for f in ("global.crt", "global.key") if not (self / f).exists()]
        if missing:
            raise StoreError(
                f"no CA in {self.path} ({' and '.join(missing)} missing); "
                f"run `pki init --dir {self.path}` first"
            )
        fix = f"restore it from a backup, or start over with `pki init --dir {self.path} --force`"
        issued = store.load_issued(self / "global.crt", self / "global.key", fix=fix)
        if not isinstance(issued.key, keys.CaKey):
            raise StoreError(f"{self / 'global.key'}: {keys.ED25519_CA_REFUSED}")
        return issued

    def load_index(self) -> Index:
        return store.load_index(self / "index.json")


@dataclass(frozen=True)
class LeafRequest:
    name: str
    profile: Profile
    cn: str | None = None
    ou: str | None = None
    org: str | None = None
    dns: Sequence[str] = ()
    ips: Sequence[str] = ()
    uris: Sequence[str] = ()
    emails: Sequence[str] = ()
    days: int = 365
    key_type: KeyType = "ec"
    rsa_bits: int = 2048
    #: Replaces ``days`` when given (``--valid 24h``).
    valid: datetime.timedelta | None = None


def leaf_files(name: str) -> tuple[str, str, str]:
    return f"{name}.key", f"{name}.crt", f"{name}{CHAIN_SUFFIX}.crt"


def check_leaf_name(name: str) -> str:
    """A name whose files (``leaf_files`` + NAME.p12) are its own, whatever else exists.

    Refused with or without --force: the files would belong to another
    identity (X-chain.crt is X's chain file) or to the CA. The rule is on the
    name alone, not on what the directory holds today, so it cannot be
    sidestepped by issuing the two names in the other order.
    """
    names.check_file_stem(name)
    if name in RESERVED:
        raise InvalidNameError(
            f"name {name!r} is reserved: {name}.* files belong to the CA directory itself; "
            "pick another name"
        )
    if name.endswith(CHAIN_SUFFIX):
        owner = name.removesuffix(CHAIN_SUFFIX)
        raise InvalidNameError(
            f"name {name!r} ends in {CHAIN_SUFFIX!r}: its certificate {name}.crt would be "
            f"the chain file of {owner!r} ({leaf_files(owner)[2]}); pick a name that does "
            f"not end in {CHAIN_SUFFIX}, e.g. {owner}-2"
        )
    return name


@dataclass(frozen=True)
class CaRequest:
    """What `pki init` makes. The CAs are called "CN Root CA" and "CN Global CA", O=org.

    ``cn`` defaults to ``org``, so ``--org Acme`` gives "Acme Root CA" and the
    default stays the guide's "Example Root CA". ``valid`` (or ``days``) is
    the global CA's lifetime; the root lives 10 years, or as long as the
    global if that is longer, so the global never outlives it.
    """

    org: str = "Example"
    cn: str | None = None
    key_type: KeyType = "ec"
    rsa_bits: int = 2048
    crl_url: str | None = None
    days: int = GLOBAL_DAYS
    valid: datetime.timedelta | None = None

    @property
    def lifetime(self) -> datetime.timedelta:
        return self.valid or datetime.timedelta(days=self.days)


def new_ca(
    request: CaRequest | None = None, *, now: datetime.datetime | None = None
) -> tuple[Issued, Issued, Index]:
    """Root -> global, and an index that remembers the CRL URL for every later leaf."""
    request = request or CaRequest()
    if request.crl_url is not None:
        names.check_url(request.crl_url, what="--crl-url")
    base = request.cn or request.org
    root_name = authority.make_name(f"{base} Root CA", o=request.org)
    global_name = authority.make_name(f"{base} Global CA", o=request.org)
    lifetime = request.lifetime
    root = authority.build_root(
        name=root_name,
        key_type=request.key_type,
        now=now,
        valid=max(lifetime, datetime.timedelta(days=ROOT_DAYS)),
        rsa_bits=request.rsa_bits,
    )
    global_ca = authority.build_intermediate(
        root,
        name=global_name,
        key_type=request.key_type,
        now=now,
        valid=lifetime,
        rsa_bits=request.rsa_bits,
    )
    return root, global_ca, Index(crl_url=request.crl_url)


def add_ca(plan: store.Plan, ca: CaDir, root: Issued, global_ca: Issued) -> None:
    plan.add(ca / "root.key", store.encode_key(root.key), mode=store.KEY_MODE)
    plan.add(ca / "root.crt", store.encode_certs([root.cert]))
    plan.add(ca / "global.key", store.encode_key(global_ca.key), mode=store.KEY_MODE)
    plan.add(ca / "global.crt", store.encode_certs([global_ca.cert]))


def plan_init(
    ca: CaDir,
    request: CaRequest | None = None,
    *,
    force: bool = False,
    now: datetime.datetime | None = None,
) -> store.Plan:
    present = ca.has_ca()
    if present and not force:
        raise StoreError(
            f"{ca.path} already holds a CA ({', '.join(present)}); "
            "pass --force to replace it (every certificate it issued stops being trusted)"
        )
    root, global_ca, index = new_ca(request, now=now)
    plan = store.Plan()
    add_ca(plan, ca, root, global_ca)
    add_crl(plan, ca, global_ca, index, now=now)
    plan.report += [
        f"root CA:   {ca / 'root.crt'}  ({root.cert.subject.rfc4514_string()})",
        f"global CA: {ca / 'global.crt'}  ({global_ca.cert.subject.rfc4514_string()}; "
        f"pathlen 0, signs the leaves; until {global_ca.cert.not_valid_after_utc:%Y-%m-%d %H:%M})",
        f"CRL:       {ca / 'crl.pem'}",
        f"{ca / 'root.key'} is only needed to renew the global CA: move it offline.",
    ]
    return plan


def add_crl(
    plan: store.Plan,
    ca: CaDir,
    global_ca: Issued,
    index: Index,
    *,
    days: int = CRL_DAYS,
    now: datetime.datetime | None = None,
) -> Index:
    """Sign a CRL from the index; the index is written first, so a lost CRL can be re-signed."""
    index = index.next_crl()
    crl = authority.build_crl(
        global_ca, index.revoked(), now=now, next_update_days=days, number=index.crl_number
    )
    plan.add(ca / "index.json", dump_index(index))
    plan.add(ca / "crl.pem", store.encode_crl(crl))
    return index


def new_leaf(
    global_ca: Issued,
    request: LeafRequest,
    *,
    crl_url: str | None = None,
    now: datetime.datetime | None = None,
) -> Issued:
    org = request.org or ca_org(global_ca)
    name = authority.make_name(request.cn or request.name, ou=request.ou, o=org)
    return authority.build_leaf(
        global_ca,
        name=name,
        profile=request.profile,
        dns=request.dns,
        ips=request.ips,
        uris=request.uris,
        emails=request.emails,
        days=request.days,
        valid=request.valid,
        key_type=request.key_type,
        rsa_bits=request.rsa_bits,
        crl_url=crl_url,
        now=now,
    )


def ca_org(global_ca: Issued) -> str | None:
    """The O= leaves get by default: the signing CA's own."""
    orgs = global_ca.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(orgs[0].value) if orgs else None


def add_leaf(plan: store.Plan, ca: CaDir, name: str, leaf: Issued) -> None:
    """Key first, then NAME.crt and NAME-chain.crt: a reload in between is refused, not used."""
    plan.add(ca / leaf_files(name)[0], store.encode_key(leaf.key), mode=store.KEY_MODE)
    add_cert(plan, ca, name, leaf.chain_file_certs)


def add_cert(
    plan: store.Plan, ca: CaDir, name: str, chain_file_certs: Sequence[x509.Certificate]
) -> None:
    """NAME.crt (the leaf alone) and NAME-chain.crt (leaf + global, never the root)."""
    _, crt_file, chain_file = leaf_files(name)
    plan.add(ca / crt_file, store.encode_certs(chain_file_certs[:1]))
    plan.add(ca / chain_file, store.encode_certs(chain_file_certs))


def plan_issue(
    ca: CaDir,
    request: LeafRequest,
    *,
    p12_password: bytes | None = None,
    force: bool = False,
    now: datetime.datetime | None = None,
) -> store.Plan:
    check_leaf_name(request.name)
    global_ca = ca.load_global()
    index = ca.load_index()
    files = [*leaf_files(request.name), *([f"{request.name}.p12"] if p12_password else [])]
    earlier = [e for e in index.entries if e.name == request.name and e.revoked_at is None]
    existing = [f for f in files if (ca / f).exists()]
    if (existing or earlier) and not force:
        what = ", ".join(existing) or f"serial {format_serial(earlier[-1].serial)} in the index"
        raise StoreError(
            f"{request.name} was already issued ({what}); pass --force to issue a new one"
        )
    leaf = new_leaf(global_ca, request, crl_url=index.crl_url, now=now)
    plan = store.Plan()
    add_leaf(plan, ca, request.name, leaf)
    if p12_password:
        p12 = authority.build_p12(leaf, p12_password, friendly_name=request.name)
        plan.add(ca / f"{request.name}.p12", p12, mode=store.KEY_MODE)
    plan.add(ca / "index.json", dump_index(index.add(entry_for(request.name, leaf.cert))))
    plan.report.append(f"issued {request.name}: {', '.join(str(ca / f) for f in files)}")
    if not p12_password and (ca / f"{request.name}.p12").exists():
        plan.report.append(f"{ca / request.name}.p12 still holds the previous certificate")
    plan.report += [
        f"previous certificate {format_serial(e.serial)} stays valid until "
        f"{e.not_after:%Y-%m-%d}; `pki revoke {format_serial(e.serial)} --dir {ca.path} "
        "--reason superseded` retires it"
        for e in earlier
    ]
    return plan


def plan_revoke(
    ca: CaDir, target: str, *, reason: str = "unspecified", now: datetime.datetime | None = None
) -> store.Plan:
    if reason not in authority.REASONS:
        raise InvalidNameError(f"reason {reason!r} must be one of {', '.join(authority.REASONS)}")
    global_ca = ca.load_global()
    index = ca.load_index()
    entries = index.find(target)
    when = now or datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    index = index.revoke({e.serial for e in entries}, when, reason)
    plan = store.Plan()
    add_crl(plan, ca, global_ca, index, now=now)
    plan.report += [
        f"revoked {e.name} (serial {format_serial(e.serial)}, {reason}); {ca / 'crl.pem'} updated"
        for e in entries
    ]
    return plan


def plan_crl(
    ca: CaDir, *, days: int = CRL_DAYS, now: datetime.datetime | None = None
) -> store.Plan:
    global_ca = ca.load_global()
    plan = store.Plan()
    index = add_crl(plan, ca, global_ca, ca.load_index(), days=days, now=now)
    revoked = len(index.revoked())
    plan.report.append(
        f"{ca / 'crl.pem'}: CRL number {index.crl_number}, {revoked} revoked, "
        f"next update in {days} days"
    )
    return plan
