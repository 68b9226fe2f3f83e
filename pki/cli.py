"""The ``pki`` command: argparse in front of `pki.directory`, `pki.inspect`, `pki.verify`.

This is the only place a `PkiError` becomes output: one ``pki: <message>``
line on stderr and exit status 2, never a traceback. Argument errors get the
same treatment (argparse's own two-line usage dump is replaced). `pki verify`
answers with exit 0 (accepted) or 1 (refused, with the reason on stdout);
2 stays reserved for input we could not use.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from mtls.identity import format_dn
from pki import authority, demo, directory, store, verify
from pki.errors import CertificateRefused, PasswordError, PkiError, UsageError
from pki.inspect import describe_file

Command = Callable[[argparse.Namespace, Mapping[str, str], TextIO], int]
PASSWORD_ENV = "PKI_P12_PASSWORD"  # noqa: S105 (the variable's name, not a password)


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
    plan = directory.plan_init(
        directory.CaDir(args.dir),
        org=args.org,
        key_type=args.key_type,
        rsa_bits=args.rsa_bits,
        crl_url=args.crl_url,
        force=args.force,
    )
    return _commit(plan, out)


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
        days=args.days,
        key_type=args.key_type,
        rsa_bits=args.rsa_bits,
    )
    password = _password(args.password_file, env) if args.p12 else None
    ca = directory.CaDir(args.dir)
    return _commit(directory.plan_issue(ca, request, p12_password=password, force=args.force), out)


def _revoke(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    ca = directory.CaDir(args.dir)
    return _commit(directory.plan_revoke(ca, args.target, reason=args.reason), out)


def _crl(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    return _commit(directory.plan_crl(directory.CaDir(args.dir), days=args.days), out)


def _demo(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    return _commit(demo.plan_demo(directory.CaDir(args.dir), force=args.force), out)


def _inspect(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    print(describe_file(args.file), file=out)
    return 0


def _verify(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    if args.dir is None and args.ca is None:
        raise UsageError("verify needs --dir DIR or --ca ROOT.crt to know what to trust")
    if args.hostname and args.purpose != "server":
        raise UsageError("--hostname is checked for --purpose server only")
    try:
        policy = re.compile(args.policy) if args.policy is not None else None
    except re.error as exc:
        raise UsageError(
            f"--policy {args.policy!r} is not a valid regular expression: {exc}"
        ) from None
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
        print(f"REFUSED: {args.cert}: {exc}", file=out)
        return 1
    what = f"{args.purpose} certificate"
    print(f"OK: {format_dn(certs[0].subject)} would be accepted as a {what}", file=out)
    print("  chain: " + " <- ".join(format_dn(c.subject) for c in verdict.chain), file=out)
    for check in verdict.checks:
        print(f"  {check}", file=out)
    if crl is None:
        print("  revocation not checked (no CRL given)", file=out)
    return 0


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
    password = data.removesuffix(b"\n").removesuffix(b"\r")
    if not password:
        raise PasswordError(f"password file {path} is empty; write the PKCS#12 password into it")
    return password


def _commit(plan: store.Plan, out: TextIO) -> int:
    plan.commit()
    for line in plan.report:
        print(line, file=out)
    return 0


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
    sub = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(name: str, run: Command, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(command=run)
        return p

    def ca_dir(p: argparse.ArgumentParser, required: bool = True) -> None:
        p.add_argument("--dir", type=Path, required=required, help="the CA directory")

    def key_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--key-type", choices=["ec", "rsa"], default="ec", help="default: ec P-256")
        p.add_argument("--rsa-bits", type=int, choices=[2048, 3072], default=2048)

    init = command("init", _init, "create root.crt/key, global.crt/key (pathlen 0) and crl.pem")
    ca_dir(init)
    key_options(init)
    init.add_argument("--org", default="Example", help="O= of the CA names (default Example)")
    init.add_argument("--crl-url", help="CRL Distribution Point URL put into every leaf")
    init.add_argument("--force", action="store_true", help="replace an existing CA")

    issue = command("issue", _issue, "issue NAME.key, NAME.crt, NAME-chain.crt [NAME.p12]")
    issue.add_argument("name", metavar="NAME", help="file stem: [a-z0-9][a-z0-9._-]*")
    ca_dir(issue)
    profile = issue.add_mutually_exclusive_group(required=True)
    for flag, eku in (("server", "serverAuth"), ("client", "clientAuth"), ("both", "both EKUs")):
        profile.add_argument(
            f"--{flag}", dest="profile", action="store_const", const=flag, help=eku
        )
    issue.add_argument("--cn", help="common name (default: NAME)")
    issue.add_argument("--ou", help="organizational unit")
    issue.add_argument("--org", help="organization (default: the global CA's)")
    for flag, meta in (("dns", "HOST"), ("ip", "ADDR"), ("uri", "URI"), ("email", "ADDR")):
        issue.add_argument(
            f"--{flag}", action="append", default=[], metavar=meta, help="SAN entry, repeatable"
        )
    issue.add_argument("--days", type=_positive, default=365, metavar="N", help="default 365")
    key_options(issue)
    issue.add_argument("--p12", action="store_true", help=f"also NAME.p12 (${PASSWORD_ENV})")
    issue.add_argument("--password-file", type=Path, metavar="FILE", help="p12 password file")
    issue.add_argument("--force", action="store_true", help="re-issue an existing NAME")

    revoke = command("revoke", _revoke, "revoke NAME (all its certificates) or one SERIAL")
    revoke.add_argument("target", metavar="NAME|SERIAL")
    ca_dir(revoke)
    revoke.add_argument("--reason", choices=list(authority.REASONS), default="unspecified")

    crl = command("crl", _crl, "re-sign crl.pem with a fresh nextUpdate")
    ca_dir(crl)
    crl.add_argument(
        "--days", type=_positive, default=directory.CRL_DAYS, metavar="N", help="to nextUpdate"
    )

    inspect = command("inspect", _inspect, "show a certificate, chain file or CRL")
    inspect.add_argument("file", type=Path, metavar="FILE")

    check = command("verify", _verify, "would our servers accept this certificate, and why not")
    check.add_argument("cert", type=Path, metavar="CERT", help="leaf or chain file")
    ca_dir(check, required=False)
    check.add_argument("--ca", type=Path, help="trusted root(s) (default DIR/root.crt)")
    check.add_argument("--untrusted", type=Path, action="append", help="intermediates")
    check.add_argument("--crl", type=Path, help="CRL (default DIR/crl.pem)")
    check.add_argument("--purpose", choices=["client", "server"], default="client")
    check.add_argument("--policy", metavar="REGEX", help="the DN must fullmatch this")
    check.add_argument("--hostname", help="for --purpose server: a DNS name or IP it must cover")

    demo_ = command("demo", _demo, "make the demo PKI: CA, services, ops, lb, and a rogue")
    ca_dir(demo_)
    demo_.add_argument("--force", action="store_true", help="rebuild even a complete demo set")
    return parser
