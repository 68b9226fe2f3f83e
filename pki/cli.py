"""The ``pki`` command: argparse in front of `pki.directory`, `pki.lifecycle`, `pki.inspect`...

This is the only place a `PkiError` becomes output: one ``pki: <message>``
line on stderr and exit status 2, never a traceback. Argument errors get the
same treatment (argparse's own two-line usage dump is replaced). `pki verify`
answers with exit 0 (accepted) or 1 (refused, with the reason on stdout);
2 stays reserved for input we could not use.
"""

from __future__ import annotations

import argparse
import configparser
import datetime
import importlib.metadata
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from cryptography import x509

from mtls.dn import format_dn
from mtls.envconfig import password_line
from mtls.errors import PolicyError
from mtls.policy import compile_dn_policy
from mtls.revocation import parse_crl_file
from pki import authority, csr, demo, directory, explain, lifecycle, listing, store, verify
from pki import inspect as inspect_
from pki.errors import (
    CertificateRefused,
    PasswordError,
    PkiError,
    StoreError,
    UsageError,
    ValidityError,
)
from pki.lifetime import parse_duration

Command = Callable[[argparse.Namespace, Mapping[str, str], TextIO], int]
PASSWORD_ENV = "PKI_P12_PASSWORD"  # noqa: S105 (the variable's name, not a password)
DISTRIBUTION = "internal-mtls"
LEAF_DAYS = 365


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def main(argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None) -> int:
    """Run one command. ``environ`` defaults to os.environ; tests pass a dict instead."""
    env = os.environ if environ is None else environ
    try:
        args = _parser().parse_args(argv)
        command: Command = args.command
        return command(args, env, sys.stdout)
    except PkiError as exc:
        print(f"pki: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0


def _init(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    request = directory.CaRequest(
        org=args.org,
        cn=args.cn,
        key_type=args.key_type,
        rsa_bits=args.rsa_bits,
        crl_url=args.crl_url,
        days=args.days or directory.GLOBAL_DAYS,
        valid=args.valid,
    )
    return _commit(directory.plan_init(directory.CaDir(args.dir), request, force=args.force), out)


def _issue(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    if args.password_file is not None and not args.p12:
        raise UsageError("--password-file only makes sense with --p12")
    request = directory.LeafRequest(
        name=args.name,
        profile=args.profile,
        cn=args.cn,
        ou=args.ou,
        org=args.org,
        dns=args.dns,
        ips=args.ip,
        uris=args.uri,
        emails=args.email,
        days=args.days or LEAF_DAYS,
        valid=args.valid,
        key_type=args.key_type,
        rsa_bits=args.rsa_bits,
    )
    password = _password(args.password_file, env) if args.p12 else None
    ca = directory.CaDir(args.dir)
    return _commit(directory.plan_issue(ca, request, p12_password=password, force=args.force), out)


def _sign(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    request = directory.LeafRequest(
        name=args.name,
        profile=args.profile,
        org=args.org,
        days=args.days or LEAF_DAYS,
        valid=args.valid,
    )
    overrides = csr.Overrides(
        cn=args.cn, ou=args.ou, dns=args.dns, ips=args.ip, uris=args.uri, emails=args.email
    )
    ca = directory.CaDir(args.dir)
    return _commit(lifecycle.plan_sign(ca, args.csr, request, overrides, force=args.force), out)


def _renew(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    ca = directory.CaDir(args.dir)
    lifetime = args.valid or (datetime.timedelta(days=args.days) if args.days else None)
    renewal = lifecycle.Renewal(args.name, args.new_key, lifetime, args.revoke_old)
    has_p12 = (ca / f"{args.name}.p12").exists()
    if args.password_file is not None and not has_p12:
        raise UsageError(
            f"--password-file is for NAME.p12, and {ca / args.name}.p12 does not exist"
        )
    password = _password(args.password_file, env) if has_p12 and _has_password(args, env) else None
    return _commit(lifecycle.plan_renew(ca, renewal, p12_password=password), out)


def _list(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    ca = directory.CaDir(args.dir)
    if not ca.has_ca() and not (ca / "index.json").exists():
        raise StoreError(
            f"no CA in {args.dir} (no global.crt, no index.json); run `pki init --dir {args.dir}`"
        )
    now = datetime.datetime.now(datetime.UTC)
    index = ca.load_index()
    if args.json:
        print(listing.render_json(index, now), file=out)
    else:
        for line in listing.render_text(index, now, source=str(args.dir)):
            print(line, file=out)
    return 0


def _revoke(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    ca = directory.CaDir(args.dir)
    return _commit(directory.plan_revoke(ca, args.target, reason=args.reason), out)


def _crl(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    return _commit(directory.plan_crl(directory.CaDir(args.dir), days=args.days), out)


def _demo(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    return _commit(demo.plan_demo(directory.CaDir(args.dir), force=args.force), out)


def _inspect(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    if args.json:
        _print_json(out, inspect_.inspect_file(args.file))
    else:
        print(inspect_.describe_file(args.file), file=out)
    return 0


def _verify(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    if args.dir is None and args.ca is None:
        raise UsageError("verify needs --dir DIR or --ca ROOT.crt to know what to trust")
    if args.hostname and args.purpose != "server":
        raise UsageError("--hostname is checked for --purpose server only")
    try:  # the servers' own rule for DN policies (mtls.policy)
        policy = compile_dn_policy(args.policy, setting="--policy") if args.policy else None
    except PolicyError as exc:
        raise UsageError(str(exc)) from None
    certs = store.load_certs(args.cert)
    roots = store.load_certs(args.ca or args.dir / "root.crt", fix="pass --ca ROOT.crt")
    untrusted = [*certs[1:]]
    for path in args.untrusted or ([args.dir / "global.crt"] if args.dir else []):
        untrusted += store.load_certs(path)
    crl_path = args.crl or (args.dir / "crl.pem" if args.dir else None)
    crl = store.load_crl(crl_path) if crl_path and (args.crl or crl_path.exists()) else None
    try:
        verdict = verify.check_certificate(
            certs[0],
            roots=roots,
            intermediates=untrusted,
            purpose=args.purpose,
            hostname=args.hostname,
            crl=crl,
            policy=policy,
        )
    except CertificateRefused as exc:
        if args.json:
            _print_json(out, _verdict(args, certs[0], None, str(exc), crl is not None))
        else:
            print(f"REFUSED: {args.cert}: {exc}", file=out)
        return 1
    if args.json:
        _print_json(out, _verdict(args, certs[0], verdict, None, crl is not None))
        return 0
    what = f"{args.purpose} certificate"
    print(f"OK: {format_dn(certs[0].subject)} would be accepted as a {what}", file=out)
    print("  chain: " + " <- ".join(format_dn(c.subject) for c in verdict.chain), file=out)
    for check in verdict.checks:
        print(f"  {check}", file=out)
    if crl is None:
        print("  revocation not checked (no CRL given)", file=out)
    return 0


def _explain(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    if args.dir is None and args.ca is None:
        raise UsageError("explain needs --dir DIR or --ca ROOT.crt to know what the server trusts")
    try:
        policy = compile_dn_policy(args.policy, setting="--policy") if args.policy else None
    except PolicyError as exc:
        raise UsageError(str(exc)) from None
    presented = store.load_certs(args.cert)
    roots_file = args.ca or args.dir / "root.crt"
    roots = store.load_certs(roots_file, fix="pass --ca ROOT.crt (MTLS_CA_CERTS)")
    known = store.load_certs(args.dir / "global.crt") if args.dir else []
    crl_path = args.crl or (args.dir / "crl.pem" if args.dir else None)
    crls = None
    if crl_path is not None and (args.crl or crl_path.exists()):
        data = store.read_bytes(crl_path, what="a CRL (MTLS_CRLFILE)", fix="check --crl")
        problems: list[str] = []
        found = parse_crl_file(crl_path, data, problems)
        crls = explain.Crls(crl_path, found, problems)
    explanation = explain.explain(
        presented,
        cert_file=str(args.cert),
        roots=roots,
        roots_from=str(roots_file),
        crls=crls,
        policy=policy,
        known_intermediates=known,
    )
    if args.json:
        _print_json(out, explain.render_json(explanation))
    else:
        for line in explain.render_text(explanation):
            print(line, file=out)
    return 0 if explanation.outcome in ("served", "handshake_passed") else 1


def _verdict(
    args: argparse.Namespace,
    leaf: x509.Certificate,
    verdict: verify.Verdict | None,
    reason: str | None,
    crl_checked: bool,
) -> dict[str, Any]:
    """`pki verify --json`; the keys are listed in verify.JSON_HELP, keep the two in step."""
    return {
        "cert": str(args.cert),
        "purpose": args.purpose,
        "accepted": verdict is not None,
        "subject": format_dn(leaf.subject),
        "chain": [format_dn(c.subject) for c in verdict.chain] if verdict else [],
        "checks": list(verdict.checks) if verdict else [],
        "reason": reason,
        "revocation_checked": crl_checked,
    }


def _print_json(out: TextIO, doc: object) -> None:
    print(json.dumps(doc, indent=2), file=out)


def _has_password(args: argparse.Namespace, env: Mapping[str, str]) -> bool:
    return args.password_file is not None or bool(env.get(PASSWORD_ENV))


def version() -> str:
    """The installed distribution's version; in a bare checkout, setup.cfg's, marked as such."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pass
    config = configparser.ConfigParser()
    config.read(Path(__file__).resolve().parent.parent / "setup.cfg")
    found = config.get("metadata", "version", fallback=None)
    return f"{found} (source checkout, not installed)" if found else "unknown (not installed)"


def _password(path: Path | None, env: Mapping[str, str]) -> bytes:
    """From a file (one line; its newline is not part of it) or the environment; no default."""
    if path is None:
        value = env.get(PASSWORD_ENV, "")
        if not value:
            raise PasswordError(
                f"--p12 needs a password: pass --password-file FILE or set {PASSWORD_ENV} "
                "(there is deliberately no default)"
            )
        return value.encode()
    data = store.read_bytes(path, what="the PKCS#12 password file", fix="check --password-file")
    password = password_line(data)
    if not password:
        raise PasswordError(f"password file {path} is empty; write the PKCS#12 password into it")
    return password


def _commit(plan: store.Plan, out: TextIO) -> int:
    plan.commit()
    for line in plan.report:
        print(line, file=out)
    return 0


def _duration(text: str) -> datetime.timedelta:
    try:
        return parse_duration(text)
    except ValidityError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of days, not {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pki", description="A small certificate authority for internal mTLS.")
    parser.add_argument("--version", action="version", version=f"pki {version()}")
    sub = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(
        name: str, run: Command, help_: str, epilog: str | None = None
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(command=run)
        return p

    def ca_dir(p: argparse.ArgumentParser, required: bool = True) -> None:
        p.add_argument("--dir", type=Path, required=required, help="the CA directory")

    def key_options(p: argparse.ArgumentParser, ed25519: str) -> None:
        p.add_argument(
            "--key-type", choices=["ec", "rsa", "ed25519"], default="ec",
            help=f"default: ec P-256; ed25519 {ed25519}",
        )  # fmt: skip
        p.add_argument("--rsa-bits", type=int, choices=[2048, 3072], default=2048)

    def validity(p: argparse.ArgumentParser, default: str) -> None:
        group = p.add_mutually_exclusive_group()
        group.add_argument("--days", type=_positive, metavar="N", help=f"lifetime; {default}")
        group.add_argument(
            "--valid", type=_duration, metavar="DUR",
            help="lifetime as 30m, 24h or 90d (at least 5m, never past the issuer)",
        )  # fmt: skip

    def profile(p: argparse.ArgumentParser) -> None:
        group = p.add_mutually_exclusive_group(required=True)
        for flag, eku in (("server", "serverAuth"), ("client", "clientAuth"), ("both", "both")):
            group.add_argument(
                f"--{flag}", dest="profile", action="store_const", const=flag, help=eku
            )

    def names(p: argparse.ArgumentParser, defaults: str) -> None:
        p.add_argument("--cn", help=f"common name (default: {defaults})")
        p.add_argument(
            "--ou",
            help="organizational unit" + ("" if defaults == "NAME" else " (default: the CSR's)"),
        )
        p.add_argument("--org", help="organization (default: the global CA's)")
        for flag, meta in (("dns", "HOST"), ("ip", "ADDR"), ("uri", "URI"), ("email", "ADDR")):
            p.add_argument(
                f"--{flag}", action="append", default=[], metavar=meta, help="SAN, repeatable"
            )

    init = command("init", _init, "create root.crt/key, global.crt/key (pathlen 0) and crl.pem")
    ca_dir(init)
    key_options(init, "is refused for a CA (cryptography's verifier forbids it)")
    init.add_argument("--org", default="Example", help="O= of the CA names (default Example)")
    init.add_argument(
        "--cn",
        metavar="NAME",
        help='the CAs are "NAME Root CA" and "NAME Global CA" (default: --org)',
    )
    validity(init, "of the global CA, default 1825 (the root lives 3650 or as long)")
    init.add_argument("--crl-url", help="CRL Distribution Point URL put into every leaf")
    init.add_argument("--force", action="store_true", help="replace an existing CA")

    issue = command("issue", _issue, "issue NAME.key, NAME.crt, NAME-chain.crt [NAME.p12]")
    issue.add_argument("name", metavar="NAME", help="file stem: [a-z0-9][a-z0-9._-]*")
    ca_dir(issue)
    profile(issue)
    names(issue, "NAME")
    validity(issue, "default 365")
    key_options(issue, "works with curl, openssl and Python's ssl")
    issue.add_argument("--p12", action="store_true", help=f"also NAME.p12 (${PASSWORD_ENV})")
    issue.add_argument("--password-file", type=Path, metavar="FILE", help="p12 password file")
    issue.add_argument("--force", action="store_true", help="re-issue an existing NAME")

    sign = command(
        "sign", _sign, "sign a CSR (a key made elsewhere) into NAME.crt and NAME-chain.crt",
        epilog="The CSR's signature must verify. Taken from it: the public key, the subject's "
        "CN and OU,\nand its DNS/IP/URI/email SANs, each checked as `pki issue` checks its "
        "flags and each\nreplaced by --cn, --ou, or (all SANs) any of --dns --ip --uri "
        "--email. Everything else\n(other subject attributes, basicConstraints, keyUsage, "
        "EKU...) is ignored, listed, never copied.",
    )  # fmt: skip
    sign.add_argument("csr", type=Path, metavar="CSR", help="PEM or DER PKCS#10 request")
    ca_dir(sign)
    sign.add_argument("--name", required=True, help="file stem of NAME.crt, NAME-chain.crt")
    profile(sign)
    names(sign, "the CSR's, else NAME")
    validity(sign, "default 365")
    sign.add_argument("--force", action="store_true", help="sign again over an existing NAME")

    renew = command(
        "renew", _renew, "re-issue NAME with the same subject, SANs and profile",
        epilog="Replaces NAME.crt and NAME-chain.crt atomically (NAME.key with --new-key, "
        "NAME.p12 if\nthere is one: then the p12 password is needed, as for `pki issue "
        "--p12`, and must open\nthe current file). Default lifetime: the replaced "
        "certificate's.",
    )  # fmt: skip
    renew.add_argument("name", metavar="NAME")
    ca_dir(renew)
    renew.add_argument("--new-key", action="store_true", help="a new key of the same type")
    validity(renew, "default: the replaced certificate's lifetime")
    renew.add_argument("--revoke-old", action="store_true", help="revoke the old serial at once")
    renew.add_argument("--password-file", type=Path, metavar="FILE", help="NAME.p12's password")

    list_ = command("list", _list, "every certificate in the index: expiry, time left, revoked",
                    epilog=listing.JSON_HELP)  # fmt: skip
    ca_dir(list_)
    list_.add_argument("--json", action="store_true", help="machine-readable, see below")

    revoke = command("revoke", _revoke, "revoke NAME (all its certificates) or one SERIAL")
    revoke.add_argument("target", metavar="NAME|SERIAL")
    ca_dir(revoke)
    revoke.add_argument("--reason", choices=list(authority.REASONS), default="unspecified")

    crl = command("crl", _crl, "re-sign crl.pem with a fresh nextUpdate")
    ca_dir(crl)
    crl.add_argument(
        "--days", type=_positive, default=directory.CRL_DAYS, metavar="N", help="to nextUpdate"
    )

    inspect = command("inspect", _inspect, "show a certificate, chain file, CSR or CRL",
                      epilog=inspect_.JSON_HELP)  # fmt: skip
    inspect.add_argument("file", type=Path, metavar="FILE")
    inspect.add_argument("--json", action="store_true", help="machine-readable, see below")

    check = command("verify", _verify, "would our servers accept this certificate, and why not",
                    epilog=verify.JSON_HELP)  # fmt: skip
    check.add_argument("cert", type=Path, metavar="CERT", help="leaf or chain file")
    ca_dir(check, required=False)
    check.add_argument("--ca", type=Path, help="trusted root(s) (default DIR/root.crt)")
    check.add_argument("--untrusted", type=Path, action="append", help="intermediates")
    check.add_argument("--crl", type=Path, help="CRL (default DIR/crl.pem)")
    check.add_argument("--purpose", choices=["client", "server"], default="client")
    check.add_argument("--policy", metavar="REGEX", help="the DN must fullmatch this")
    check.add_argument("--hostname", help="for --purpose server: a DNS name or IP it must cover")
    check.add_argument("--json", action="store_true", help="machine-readable, see below")

    why = command("explain", _explain,
                  "each check the server and the DN policy make on a client cert; which decides",
                  epilog=explain.JSON_HELP)  # fmt: skip
    why.add_argument(
        "cert", type=Path, metavar="CERT", help="what the client presents: NAME-chain.crt"
    )
    ca_dir(why, required=False)
    why.add_argument("--ca", type=Path, help="the server's MTLS_CA_CERTS (default DIR/root.crt)")
    why.add_argument("--crl", type=Path, help="the server's MTLS_CRLFILE (default DIR/crl.pem)")
    why.add_argument("--policy", metavar="REGEX", help="the DN policy, e.g. USERSERVICE_ALLOWED_DN")
    why.add_argument("--json", action="store_true", help="machine-readable, see below")

    demo_ = command("demo", _demo, "make the demo PKI: CA, services, ops, lb, and a rogue")
    ca_dir(demo_)
    demo_.add_argument("--force", action="store_true", help="rebuild even a complete demo set")
    return parser
