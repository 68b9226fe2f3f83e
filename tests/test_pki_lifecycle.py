"""`pki sign`, `pki renew`, `pki list`, ``--valid``, ``--json``, ``--version``, Ed25519.

Every success is paired with the refusals around it; a refusal is one line,
exit 2, and the CA directory untouched (`tests.pki_checks`). CSRs are made
here with `cryptography`, the way another host or an HSM front end would.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from mtls.identity import format_serial
from pki import cli, directory, lifecycle, listing, store
from pki.lifetime import format_duration, parse_duration
from tests.pki_checks import Run, mode, refused, snapshot

CsrKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
MINUTE = datetime.timedelta(minutes=1)
SKEW = datetime.timedelta(minutes=5)


def make_csr(
    path: Path,
    *,
    cn: str | None = "ext.internal",
    ou: str | None = "Services",
    extra_subject: Sequence[x509.NameAttribute[str]] = (),
    sans: Sequence[x509.GeneralName] = (x509.DNSName("ext.internal"),),
    ca: bool = False,
    key: CsrKey | None = None,
    der: bool = False,
) -> CsrKey:
    """Write a CSR as another host would make it; ``ca`` asks for CA:TRUE and keyCertSign."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    attrs = [*extra_subject]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou)] if ou else []
    attrs += [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    request = builder.sign(key, algorithm)
    encoding = serialization.Encoding.DER if der else serialization.Encoding.PEM
    path.write_bytes(request.public_bytes(encoding))
    return key


def cert(d: Path, name: str) -> x509.Certificate:
    return store.load_cert(d / f"{name}.crt")


def lifetime(c: x509.Certificate) -> datetime.timedelta:
    """What was asked for: the window minus the 5 minutes of back-dating."""
    return c.not_valid_after_utc - c.not_valid_before_utc - SKEW


def sans(c: x509.Certificate) -> list[x509.GeneralName]:
    return list(c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def basic_constraints(c: x509.Certificate) -> x509.BasicConstraints:
    return c.extensions.get_extension_for_class(x509.BasicConstraints).value


# --- --valid DUR ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5m", 5 * MINUTE),
        ("30m", 30 * MINUTE),
        ("24h", 24 * 60 * MINUTE),
        ("90d", 90 * 1440 * MINUTE),
    ],
)
def test_durations_parse_in_minutes_hours_and_days(text: str, expected: datetime.timedelta) -> None:
    assert parse_duration(text) == expected


def test_durations_print_largest_unit_first() -> None:
    assert format_duration(datetime.timedelta(days=89, hours=23, minutes=59)) == "89d 23h 59m"
    assert format_duration(datetime.timedelta(seconds=30)) == "0m"


@pytest.mark.parametrize("argv_valid", [["--valid", "30m"], ["--valid", "24h"], ["--days", "2"]])
def test_issue_lives_exactly_as_long_as_asked(run: Run, ca: Path, argv_valid: list[str]) -> None:
    assert run("issue", "svc", "--dir", ca, "--client", *argv_valid)[0] == 0
    asked = parse_duration(argv_valid[1]) if argv_valid[0] == "--valid" else 2 * 1440 * MINUTE
    assert lifetime(cert(ca, "svc")) == asked
    assert json.loads(run("list", "--dir", ca, "--json")[1])["certificates"][0]["seconds_left"] <= (
        asked.total_seconds()
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--valid", "4m"], r"argument --valid: '4m' is shorter than the minimum of 5m"),
        (["--valid", "0m"], r"argument --valid: '0m' is not a duration"),
        (["--valid", "1w"], r"argument --valid: '1w' is not a duration: .* m \(minutes\)"),
        (["--valid", "1.5h"], r"'1\.5h' is not a duration"),
        (["--valid", "1h", "--days", "3"], r"argument --days: not allowed with argument --valid"),
        (["--valid", "3000d"], r"after its issuer CN=Example Global CA,O=Example \(notAfter 20"),
    ],
)
def test_issue_with_bad_validity_exits_2_and_touches_nothing(
    run: Run, ca: Path, argv: list[str], message: str
) -> None:
    before = snapshot(ca)
    refused(run("issue", "svc", "--dir", ca, "--client", *argv), message)
    assert snapshot(ca) == before


def test_a_certificate_never_outlives_a_short_lived_issuer(run: Run, tmp_path: Path) -> None:
    d = tmp_path / "ca"
    assert run("init", "--dir", d, "--valid", "1h")[0] == 0
    issuer_end = store.load_cert(d / "global.crt").not_valid_after_utc
    before = snapshot(d)
    refused(
        run("issue", "svc", "--dir", d, "--client", "--valid", "2h"),
        rf"notAfter {issuer_end:%Y-%m-%d %H:%M:%S} UTC\); use --valid (1h|59m) or less",
    )
    assert snapshot(d) == before
    assert run("issue", "svc", "--dir", d, "--client", "--valid", "30m")[0] == 0


# --- init --org / --cn, --version, ed25519 CA refused -----------------------------------------


@pytest.mark.parametrize(
    ("argv", "root_dn", "global_dn"),
    [
        ([], "CN=Example Root CA,O=Example", "CN=Example Global CA,O=Example"),
        (["--org", "Acme"], "CN=Acme Root CA,O=Acme", "CN=Acme Global CA,O=Acme"),
        (
            ["--org", "Acme", "--cn", "Acme Payments"],
            "CN=Acme Payments Root CA,O=Acme",
            "CN=Acme Payments Global CA,O=Acme",
        ),
    ],
)
def test_init_names_root_and_global_after_org_and_cn(
    run: Run, tmp_path: Path, argv: list[str], root_dn: str, global_dn: str
) -> None:
    d = tmp_path / "ca"
    code, out, _ = run("init", "--dir", d, *argv)
    assert code == 0
    assert store.load_cert(d / "root.crt").subject.rfc4514_string() == root_dn
    assert store.load_cert(d / "global.crt").subject.rfc4514_string() == global_dn
    assert global_dn in out
    assert run("issue", "svc", "--dir", d, "--client")[0] == 0
    assert cert(d, "svc").issuer.rfc4514_string() == global_dn


def test_init_with_an_ed25519_ca_is_refused_saying_why(run: Run, tmp_path: Path) -> None:
    refused(
        run("init", "--dir", tmp_path / "ca", "--key-type", "ed25519"),
        r"an Ed25519 CA is refused: cryptography's verifier .* forbids Ed25519 keys on CA",
    )
    assert not (tmp_path / "ca").exists()


def test_version_comes_from_the_package_metadata(run: Run) -> None:
    code, out, _ = run("--version")
    assert code == 0
    assert out == f"pki {cli.version()}\n"
    assert out.startswith("pki 0.")
    console = subprocess.run(
        [sys.executable, "-m", "pki", "--version"], capture_output=True, text=True, timeout=30
    )
    assert console.stdout == out


# --- sign -------------------------------------------------------------------------------------


def test_sign_takes_key_cn_ou_and_sans_from_the_csr_and_ignores_ca_true(
    run: Run, ca: Path, tmp_path: Path
) -> None:
    csr = tmp_path / "ext.csr"
    key = make_csr(
        csr,
        extra_subject=[x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Evil")],
        sans=[
            x509.DNSName("ext.internal"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ],
        ca=True,
    )
    code, out, _ = run("sign", csr, "--dir", ca, "--name", "ext", "--client", "--valid", "24h")
    assert code == 0
    leaf = cert(ca, "ext")
    assert leaf.public_key() == key.public_key()
    assert leaf.subject.rfc4514_string() == "CN=ext.internal,OU=Services,O=Example"
    assert [str(n.value) for n in sans(leaf)] == ["ext.internal", "127.0.0.1"]
    assert basic_constraints(leaf).ca is False
    assert lifetime(leaf) == datetime.timedelta(hours=24)
    assert "ignored from the CSR: extension basicConstraints CA:TRUE" in out
    assert "ignored from the CSR: subject O=Evil" in out
    assert not (ca / "ext.key").exists(), "the key is never seen, so never written"
    chain = store.load_certs(ca / "ext-chain.crt")
    assert [c.subject for c in chain] == [leaf.subject, store.load_cert(ca / "global.crt").subject]
    listed = json.loads(run("list", "--dir", ca, "--json")[1])["certificates"]
    assert [(r["name"], r["serial"]) for r in listed] == [
        ("ext", format_serial(leaf.serial_number))
    ]


def test_sign_flags_override_the_csr_subject_and_replace_all_its_sans(
    run: Run, ca: Path, tmp_path: Path
) -> None:
    csr = tmp_path / "ext.csr"
    make_csr(csr, der=True)
    argv = ["--cn", "api.internal", "--ou", "Edge", "--dns", "api.internal", "--server"]
    code, out, _ = run("sign", csr, "--dir", ca, "--name", "api", *argv)
    assert code == 0
    leaf = cert(ca, "api")
    assert leaf.subject.rfc4514_string() == "CN=api.internal,OU=Edge,O=Example"
    assert [str(n.value) for n in sans(leaf)] == ["api.internal"]
    assert "SAN DNS:ext.internal (replaced by the flags)" in out


def test_sign_accepts_an_ed25519_csr(run: Run, ca: Path, tmp_path: Path) -> None:
    csr = tmp_path / "ed.csr"
    key = make_csr(csr, key=ed25519.Ed25519PrivateKey.generate())
    assert run("sign", csr, "--dir", ca, "--name", "ed", "--both")[0] == 0
    assert cert(ca, "ed").public_key() == key.public_key()


def weak_rsa() -> rsa.RSAPrivateKey:
    """What an old tool still makes, and pki must refuse."""
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (on purpose)


def tampered(path: Path) -> None:
    """Change one letter of the signed subject: still a parsable CSR, no longer a signed one."""
    make_csr(path, der=True)
    data = path.read_bytes()
    path.write_bytes(data.replace(b"ext.internal", b"evl.internal", 1))


def two_cns(path: Path) -> None:
    make_csr(path, extra_subject=[x509.NameAttribute(NameOID.COMMON_NAME, "other")])


BAD_CSRS: list[tuple[str, Callable[[Path], object], list[str], str]] = [
    ("bad signature", tampered, [], r"req\.csr: the CSR's signature does not verify"),
    ("not a CSR", lambda p: p.write_text("hello\n"), [], r"req\.csr holds no PEM or DER cert"),
    ("missing", lambda p: None, [], r"req\.csr does not exist"),
    (
        "1024-bit RSA",
        lambda p: make_csr(p, key=weak_rsa()),
        [],
        r"req\.csr holds a 1024-bit RSA key; pki signs EC .* RSA \(2048-8192 bits\)",
    ),
    (
        "secp256k1",
        lambda p: make_csr(p, key=ec.generate_private_key(ec.SECP256K1())),
        [],
        r"holds an EC key on secp256k1",
    ),
    (
        "bad SAN",
        lambda p: make_csr(p, sans=[x509.DNSName("bad_name.internal")]),
        [],
        r"req\.csr: the CSR's subjectAltName is not acceptable: DNS name 'bad_name",
    ),
    (
        "dirName SAN",
        lambda p: make_csr(p, sans=[x509.DirectoryName(x509.Name([]))]),
        [],
        r"asks for a SAN pki does not issue .* set the SANs yourself with --dns",
    ),
    ("two CNs", two_cns, [], r"subject has 2 CNs .*; pass --cn to choose one"),
    ("no SAN, CN not a host", lambda p: make_csr(p, cn="Ext Service", sans=[]), [], r"needs a "),
    ("4 minutes", make_csr, ["--valid", "4m"], r"'4m' is shorter than the minimum of 5m"),
    ("past issuer", make_csr, ["--valid", "9000d"], r"after its issuer .*\(notAfter "),
    ("reserved name", make_csr, ["--name", "global"], r"name 'global' is the CA's own"),
    ("bad name", make_csr, ["--name", "Ext/1"], r"name 'Ext/1' is not a safe file name"),
]


@pytest.mark.parametrize(
    ("why", "write", "argv", "message"), BAD_CSRS, ids=[b[0] for b in BAD_CSRS]
)
def test_sign_refuses_bad_csrs_and_touches_nothing(
    run: Run,
    ca: Path,
    tmp_path: Path,
    why: str,
    write: Callable[[Path], object],
    argv: list[str],
    message: str,
) -> None:
    csr = tmp_path / "req.csr"
    write(csr)
    before = snapshot(ca)
    name = [] if "--name" in argv else ["--name", "ext"]
    refused(run("sign", csr, "--dir", ca, "--client", *name, *argv), message)
    assert snapshot(ca) == before


def test_sign_over_an_issued_name_is_refused_even_with_force(
    run: Run, ca: Path, tmp_path: Path
) -> None:
    csr = tmp_path / "req.csr"
    make_csr(csr)
    assert run("issue", "ext", "--dir", ca, "--client")[0] == 0
    before = snapshot(ca)
    refused(run("sign", csr, "--dir", ca, "--name", "ext", "--client"), r"ext\.key belong to an")
    refused(run("sign", csr, "--dir", ca, "--name", "ext", "--client", "--force"), r"remove")
    assert snapshot(ca) == before


def test_sign_twice_needs_force(run: Run, ca: Path, tmp_path: Path) -> None:
    csr = tmp_path / "req.csr"
    make_csr(csr)
    assert run("sign", csr, "--dir", ca, "--name", "ext", "--client")[0] == 0
    before = snapshot(ca)
    refused(run("sign", csr, "--dir", ca, "--name", "ext", "--client"), r"pass --force to sign")
    assert snapshot(ca) == before
    assert run("sign", csr, "--dir", ca, "--name", "ext", "--client", "--force")[0] == 0


def test_sign_without_a_ca_exits_2(run: Run, tmp_path: Path) -> None:
    make_csr(tmp_path / "req.csr")
    refused(
        run("sign", tmp_path / "req.csr", "--dir", tmp_path / "none", "--name", "x", "--client"),
        r"no CA in .*none .*run `pki init",
    )


# --- renew ------------------------------------------------------------------------------------


def test_renew_keeps_subject_sans_profile_key_and_lifetime(run: Run, ca: Path) -> None:
    argv = ["--both", "--cn", "web.internal", "--ou", "Web", "--dns", "web.internal", "--ip", "::1"]
    assert run("issue", "web", "--dir", ca, *argv, "--valid", "2h")[0] == 0
    old = cert(ca, "web")
    old_key = (ca / "web.key").read_bytes()
    code, out, _ = run("renew", "web", "--dir", ca)
    assert code == 0
    new = cert(ca, "web")
    assert new.serial_number != old.serial_number
    assert (new.subject, sans(new), new.public_key()) == (old.subject, sans(old), old.public_key())
    assert new.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == (
        old.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    assert lifetime(new) == datetime.timedelta(hours=2)
    assert (ca / "web.key").read_bytes() == old_key
    assert store.load_certs(ca / "web-chain.crt")[0] == new
    assert f"the old serial {format_serial(old.serial_number)} stays valid until" in out
    listed = json.loads(run("list", "--dir", ca, "--json")[1])["certificates"]
    assert [r["serial"] for r in listed] == [format_serial(c.serial_number) for c in (old, new)]


def test_renew_through_the_library_keeps_a_compressed_one_minute_lifetime(ca: Path) -> None:
    """The 5-minute floor is the command line's; tests that compress time renew 60 s certs."""
    minute = datetime.timedelta(seconds=60)
    directory.plan_issue(
        directory.CaDir(ca), directory.LeafRequest("fast", "client", valid=minute)
    ).commit()
    for _ in range(2):
        lifecycle.plan_renew(directory.CaDir(ca), lifecycle.Renewal("fast")).commit()
        assert lifetime(cert(ca, "fast")) == minute


def test_renew_new_key_and_revoke_old(run: Run, ca: Path) -> None:
    assert run("issue", "web", "--dir", ca, "--server", "--dns", "web.internal")[0] == 0
    old = cert(ca, "web")
    code, out, _ = run("renew", "web", "--dir", ca, "--new-key", "--revoke-old", "--valid", "30m")
    assert code == 0
    new = cert(ca, "web")
    assert new.public_key() != old.public_key()
    assert store.load_key(ca / "web.key").public_key() == new.public_key()
    assert mode(ca / "web.key") == 0o600
    assert lifetime(new) == datetime.timedelta(minutes=30)
    crl = store.load_crl(ca / "crl.pem")
    assert crl.get_revoked_certificate_by_serial_number(old.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(new.serial_number) is None
    assert "revoked the old serial" in out
    text = run("list", "--dir", ca)[1]
    assert f"{format_serial(old.serial_number)}" in text
    assert "superseded" in text


def test_renew_of_a_csr_signed_certificate_re_signs_its_key(
    run: Run, ca: Path, tmp_path: Path
) -> None:
    key = make_csr(tmp_path / "req.csr")
    assert run("sign", tmp_path / "req.csr", "--dir", ca, "--name", "ext", "--client")[0] == 0
    assert run("renew", "ext", "--dir", ca, "--valid", "1h")[0] == 0
    assert cert(ca, "ext").public_key() == key.public_key()
    assert not (ca / "ext.key").exists()
    before = snapshot(ca)
    refused(run("renew", "ext", "--dir", ca, "--new-key"), r"signed from a CSR .* pki never saw")
    assert snapshot(ca) == before


def test_renew_replaces_the_p12_with_the_same_password(run: Run, ca: Path, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("guess\n")
    argv = ["--client", "--p12", "--password-file", pw]
    assert run("issue", "ops", "--dir", ca, *argv)[0] == 0
    before = snapshot(ca)
    refused(run("renew", "ops", "--dir", ca), r"ops\.p12 exists .* pass --password-file FILE")
    refused(run("renew", "ops", "--dir", ca, "--password-file", wrong), r"does not open .*ops\.p12")
    assert snapshot(ca) == before
    assert run("renew", "ops", "--dir", ca, "--password-file", pw, "--new-key")[0] == 0
    key, leaf, _ = pkcs12.load_key_and_certificates((ca / "ops.p12").read_bytes(), b"s3cret")
    assert leaf == cert(ca, "ops")
    assert key is not None
    assert leaf is not None
    assert key.public_key() == leaf.public_key()
    assert mode(ca / "ops.p12") == 0o600


def test_renew_refuses_a_password_file_without_a_p12(run: Run, ca: Path, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("x\n")
    assert run("issue", "svc", "--dir", ca, "--client")[0] == 0
    refused(run("renew", "svc", "--dir", ca, "--password-file", tmp_path / "pw"), r"svc\.p12 does")


def test_renew_of_a_revoked_certificate_needs_a_new_key(run: Run, ca: Path) -> None:
    assert run("issue", "svc", "--dir", ca, "--client")[0] == 0
    assert run("revoke", "svc", "--dir", ca, "--reason", "keyCompromise")[0] == 0
    before = snapshot(ca)
    refused(run("renew", "svc", "--dir", ca), r"was revoked \(keyCompromise\).* pass --new-key")
    assert snapshot(ca) == before
    assert run("renew", "svc", "--dir", ca, "--new-key")[0] == 0


@pytest.mark.parametrize(
    ("name", "argv", "message"),
    [
        ("nope", [], r"no certificate 'nope' in .*`pki list --dir .*` shows what was issued"),
        ("global", [], r"name 'global' is the CA's own"),
        ("svc", ["--valid", "4m"], r"'4m' is shorter than the minimum"),
        ("svc", ["--valid", "9000d"], r"after its issuer .*\(notAfter .*; use --days \d+"),
        ("svc", ["--days", "2", "--valid", "1h"], r"not allowed with argument"),
    ],
)
def test_renew_bad_input_exits_2_and_touches_nothing(
    run: Run, ca: Path, name: str, argv: list[str], message: str
) -> None:
    assert run("issue", "svc", "--dir", ca, "--client")[0] == 0
    before = snapshot(ca)
    refused(run("renew", name, "--dir", ca, *argv), message)
    assert snapshot(ca) == before


def test_renew_refuses_a_certificate_of_another_ca(run: Run, ca: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    assert run("init", "--dir", other)[0] == 0
    assert run("issue", "svc", "--dir", other, "--client")[0] == 0
    for f in ("svc.crt", "svc-chain.crt", "svc.key"):
        shutil.copy(other / f, ca / f)
    before = snapshot(ca)
    refused(run("renew", "svc", "--dir", ca), r"svc\.crt was not issued by this CA's global\.crt")
    assert snapshot(ca) == before


# --- list -------------------------------------------------------------------------------------


def test_list_on_a_directory_without_a_ca_exits_2(run: Run, tmp_path: Path) -> None:
    refused(run("list", "--dir", tmp_path), r"no CA in .*; run `pki init --dir")
    refused(run("list", "--dir", tmp_path, "--json"), r"no CA in")


def test_list_of_a_fresh_ca_is_empty(run: Run, ca: Path) -> None:
    empty = f"{ca}: no certificates issued yet (`pki issue NAME --dir DIR` makes one)\n"
    assert run("list", "--dir", ca) == (0, empty, "")
    assert json.loads(run("list", "--dir", ca, "--json")[1]) == {"certificates": []}


def test_list_shows_name_serial_expiry_time_left_and_revocation(run: Run, ca: Path) -> None:
    assert run("issue", "a", "--dir", ca, "--client", "--valid", "90m")[0] == 0
    assert run("issue", "b", "--dir", ca, "--client")[0] == 0
    assert run("revoke", "b", "--dir", ca, "--reason", "superseded")[0] == 0
    code, out, _ = run("list", "--dir", ca, "--json")
    assert code == 0
    rows = json.loads(out)["certificates"]
    assert [tuple(r) for r in rows] == [listing.JSON_KEYS] * 2
    a, b = rows
    assert (a["name"], a["serial"], a["subject"]) == (
        "a", format_serial(cert(ca, "a").serial_number), "CN=a,O=Example",
    )  # fmt: skip
    assert a["not_after"] == cert(ca, "a").not_valid_after_utc.isoformat()
    assert 88 * 60 <= a["seconds_left"] <= 90 * 60
    assert a["time_left"] in ("1h 29m", "1h 30m", "1h 28m")
    assert a["revoked"] is None
    assert b["revoked"]["reason"] == "superseded"
    table = run("list", "--dir", ca)[1].splitlines()
    assert table[0].split() == [
        "NAME",
        "SERIAL",
        "NOT",
        "AFTER",
        "(UTC)",
        "LEFT",
        "REVOKED",
        "SUBJECT",
    ]
    assert table[1].startswith(f"a     {a['serial']}")
    assert "superseded" in table[2]


# --- inspect / verify --json, inspect CSR -----------------------------------------------------


def test_inspect_shows_what_a_csr_asks_for(run: Run, tmp_path: Path) -> None:
    make_csr(tmp_path / "ext.csr", ca=True)
    code, out, _ = run("inspect", tmp_path / "ext.csr")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"{tmp_path / 'ext.csr'}: certificate signing request"
    assert "  subject DN:   CN=ext.internal,OU=Services" in lines
    assert "  SAN:          DNS:ext.internal" in lines
    assert "  key:          EC secp256r1" in lines
    assert "  signature:    yes" in lines
    assert "  extensions:   subjectAlternativeName, basicConstraints CA:TRUE" in lines
    tampered(tmp_path / "bad.csr")
    facts = json.loads(run("inspect", tmp_path / "bad.csr", "--json")[1])
    assert (facts["type"], facts["signature_valid"]) == ("csr", False)
    assert run("inspect", tmp_path / "bad.csr")[1].count("signature:    NO: altered") == 1


def test_inspect_json_of_a_chain_and_a_crl(run: Run, ca: Path) -> None:
    assert run("issue", "svc", "--dir", ca, "--both", "--dns", "svc.internal")[0] == 0
    facts = json.loads(run("inspect", ca / "svc-chain.crt", "--json")[1])
    leaf = cert(ca, "svc")
    assert facts["type"] == "certificate"
    assert facts["serial"] == format_serial(leaf.serial_number)
    assert facts["eku"] == ["serverAuth", "clientAuth"]
    assert facts["san"] == ["DNS:svc.internal"]
    assert facts["ca"] == "CA:FALSE"
    assert [c["subject"] for c in facts["chain"]] == ["CN=Example Global CA,O=Example"]
    crl = json.loads(run("inspect", ca / "crl.pem", "--json")[1])
    assert (crl["type"], crl["out_of_date"], crl["revoked"]) == ("crl", False, [])


def test_verify_json_for_accepted_and_refused(run: Run, ca: Path) -> None:
    assert run("issue", "svc", "--dir", ca, "--client")[0] == 0
    code, out, _ = run("verify", ca / "svc-chain.crt", "--dir", ca, "--json")
    doc = json.loads(out)
    assert code == 0
    assert list(doc) == [
        "cert", "purpose", "accepted", "subject", "chain", "checks", "reason",
        "revocation_checked",
    ]  # fmt: skip
    assert (doc["accepted"], doc["reason"], doc["revocation_checked"]) == (True, None, True)
    assert doc["chain"][-1] == "CN=Example Root CA,O=Example"
    code, out, _ = run("verify", ca / "svc.crt", "--dir", ca, "--purpose", "server", "--json")
    doc = json.loads(out)
    assert code == 1
    assert doc["accepted"] is False
    assert "wrong purpose" in doc["reason"]


def test_json_keys_are_documented_in_the_help(run: Run) -> None:
    listed = run("list", "--help")[1]
    for key in listing.JSON_KEYS:
        assert key in listed
    assert "signature_valid" in run("inspect", "--help")[1]
    assert "revocation_checked" in run("verify", "--help")[1]


# --- Ed25519 leaves ----------------------------------------------------------------------------


def test_ed25519_leaf_has_digital_signature_only(run: Run, ca: Path) -> None:
    assert run("issue", "ed", "--dir", ca, "--both", "--key-type", "ed25519")[0] == 0
    leaf = cert(ca, "ed")
    assert isinstance(leaf.public_key(), ed25519.Ed25519PublicKey)
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.key_encipherment
    assert "  key:          Ed25519" in run("inspect", ca / "ed.crt")[1].splitlines()
    assert run("verify", ca / "ed-chain.crt", "--dir", ca)[0] == 0
    assert run("renew", "ed", "--dir", ca, "--new-key")[0] == 0
    assert isinstance(cert(ca, "ed").public_key(), ed25519.Ed25519PublicKey)
