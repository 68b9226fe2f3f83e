"""The `pki` command end to end on real directories: every command, and every refusal.

A refusal must be one ``pki: ...`` line on stderr, exit status 2, and leave
the directory exactly as it was (same files, same bytes, same mtimes).
"""

from __future__ import annotations

import datetime
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from mtls.identity import format_serial, format_time
from pki import authority, store
from pki.authority import Issued
from pki.errors import StoreError
from tests.pki_checks import Run, mode, refused, snapshot

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


def load(d: Path, name: str) -> Issued:
    return store.load_issued(d / f"{name}-chain.crt", d / f"{name}.key", fix="")


# --- init -------------------------------------------------------------------------------------


def test_init_makes_root_global_and_crl_with_private_keys(run: Run, tmp_path: Path) -> None:
    d = tmp_path / "new" / "ca"
    code, out, _ = run("init", "--dir", d)
    assert code == 0
    assert sorted(p.name for p in d.iterdir()) == [
        "crl.pem",
        "global.crt",
        "global.key",
        "index.json",
        "root.crt",
        "root.key",
    ]
    assert mode(d / "root.key") == 0o600
    assert mode(d / "global.key") == 0o600
    assert mode(d / "root.crt") == 0o644
    assert "root.key is only needed to renew the global CA: move it offline" in out
    crl = store.load_crl(d / "crl.pem")
    assert crl.issuer == store.load_cert(d / "global.crt").subject


def test_init_over_an_existing_ca_exits_2_and_touches_nothing(run: Run, ca: Path) -> None:
    before = snapshot(ca)
    refused(run("init", "--dir", ca), r"already holds a CA \(root\.crt.*pass --force")
    assert snapshot(ca) == before


def test_init_force_replaces_the_ca(run: Run, ca: Path) -> None:
    old_root = (ca / "root.crt").read_bytes()
    assert run("init", "--dir", ca, "--force", "--org", "Acme")[0] == 0
    root = store.load_cert(ca / "root.crt")
    assert (ca / "root.crt").read_bytes() != old_root
    assert root.subject.rfc4514_string() == "CN=Acme Root CA,O=Acme"
    assert store.load_cert(ca / "global.crt").subject.rfc4514_string() == "CN=Acme Global CA,O=Acme"


def test_init_with_bad_crl_url_exits_2_and_creates_nothing(run: Run, tmp_path: Path) -> None:
    refused(run("init", "--dir", tmp_path / "x", "--crl-url", "file:///crl"), "--crl-url 'file")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://[::1", r"--crl-url 'http://\[::1' is malformed \(Invalid IPv6 URL\)"),
        ("http://[zz]/crl", r"--crl-url 'http://\[zz\]/crl' is malformed"),
        ("http://pki:99999/crl", r"--crl-url 'http://pki:99999/crl' is malformed \(Port out of"),
    ],
)
def test_init_with_unparsable_crl_url_exits_2_and_creates_nothing(
    run: Run, tmp_path: Path, url: str, message: str
) -> None:
    refused(run("init", "--dir", tmp_path / "x", "--crl-url", url), message)
    assert not (tmp_path / "x").exists()


def test_crl_url_of_init_goes_into_every_leaf(run: Run, tmp_path: Path) -> None:
    d = tmp_path / "ca"
    assert run("init", "--dir", d, "--crl-url", "http://pki.example/crl.pem")[0] == 0
    assert run("issue", "svc", "--dir", d, "--server")[0] == 0
    points = store.load_cert(d / "svc.crt").extensions.get_extension_for_class(
        x509.CRLDistributionPoints
    )
    assert points.value[0].full_name == [
        x509.UniformResourceIdentifier("http://pki.example/crl.pem")
    ]


# --- issue ------------------------------------------------------------------------------------


def test_issue_writes_key_cert_and_chain_of_leaf_plus_global(run: Run, ca: Path) -> None:
    code, out, err = run(
        "issue", "web", "--dir", ca, "--both", "--cn", "web.internal", "--ou", "Services",
        "--dns", "web.internal", "--ip", "10.0.0.1", "--uri", "spiffe://example/web",
        "--email", "web@example.org", "--days", "30",
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert f"issued web: {ca / 'web.key'}, {ca / 'web.crt'}, {ca / 'web-chain.crt'}" in out
    assert mode(ca / "web.key") == 0o600
    chain = store.load_certs(ca / "web-chain.crt")
    assert chain == [store.load_cert(ca / "web.crt"), store.load_cert(ca / "global.crt")]
    leaf = chain[0]
    assert leaf.subject.rfc4514_string() == "CN=web.internal,OU=Services,O=Example"
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in sans] == [
        "web.internal",
        "10.0.0.1",
        "spiffe://example/web",
        "web@example.org",
    ]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == 30 * DAY + authority.CLOCK_SKEW
    assert load(ca, "web").key.public_key() == leaf.public_key()
    index = (ca / "index.json").read_text()
    assert f'"{format_serial(leaf.serial_number)}"' in index


def test_issue_defaults_cn_to_name_and_org_to_the_cas(run: Run, ca: Path) -> None:
    assert run("issue", "worker-1", "--dir", ca, "--client")[0] == 0
    leaf = store.load_cert(ca / "worker-1.crt")
    assert leaf.subject.rfc4514_string() == "CN=worker-1,O=Example"
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(sans) == [x509.DNSName("worker-1")]


def test_issue_p12_with_password_file_is_private_and_opens_with_that_password(
    run: Run, ca: Path, tmp_path: Path
) -> None:
    password = tmp_path / "pw"
    password.write_text("correct horse\n")
    assert (
        run("issue", "svc", "--dir", ca, "--client", "--p12", "--password-file", password)[0] == 0
    )
    assert mode(ca / "svc.p12") == 0o600
    bundle = pkcs12.load_pkcs12((ca / "svc.p12").read_bytes(), b"correct horse")
    assert bundle.cert is not None
    assert bundle.cert.certificate == store.load_cert(ca / "svc.crt")


def test_issue_p12_takes_the_password_from_the_environment(run: Run, ca: Path) -> None:
    assert (
        run("issue", "svc", "--dir", ca, "--client", "--p12", env={"PKI_P12_PASSWORD": "e"})[0] == 0
    )
    assert pkcs12.load_pkcs12((ca / "svc.p12").read_bytes(), b"e").key is not None


def test_issue_force_reissues_and_says_the_old_one_is_still_valid(run: Run, ca: Path) -> None:
    assert run("issue", "svc", "--dir", ca, "--client")[0] == 0
    old = store.load_cert(ca / "svc.crt")
    code, out, _ = run("issue", "svc", "--dir", ca, "--client", "--force")
    assert code == 0
    assert store.load_cert(ca / "svc.crt") != old
    assert f"previous certificate {format_serial(old.serial_number)} stays valid" in out
    assert f"`pki revoke {format_serial(old.serial_number)} --dir {ca} --reason superseded`" in out


def test_issue_rsa_on_request(run: Run, ca: Path) -> None:
    assert run("issue", "legacy", "--dir", ca, "--server", "--key-type", "rsa")[0] == 0
    ku = store.load_cert(ca / "legacy.crt").extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.value.key_encipherment


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["Bad"], r"name 'Bad' is not a safe file name"),
        (["../x"], r"name '\.\./x' is not a safe file name"),
        (["root"], r"name 'root' is reserved"),
        (["a", "--dns", "bad_name"], r"DNS name 'bad_name' has an invalid label"),
        (["a", "--ip", "300.1.1.1"], r"IP address '300\.1\.1\.1' is not an IPv4 or IPv6"),
        (["a", "--uri", "http://[::1"], r"URI 'http://\[::1' is malformed \(Invalid IPv6 URL\)"),
        (["a", "--uri", "spiffe://h:99999/s"], r"URI 'spiffe://h:99999/s' is malformed \(Port"),
        (["a", "--cn", "Alice Smith"], r"CN=Alice Smith,O=Example needs a subjectAltName.*--dns"),
        (["a", "--days", "0"], r"argument --days: must be a positive number of days, not 0"),
        (["a", "--days", "ten"], r"argument --days: 'ten' is not a whole number"),
        (["a", "--days", "4000"], r"after its issuer .* use --days \d+ \(--valid \d+d\) or less"),
        (["a", "--p12"], r"--p12 needs a password: pass --password-file FILE or set PKI_P12_PASS"),
        (["a", "--p12", "--password-file", "/nonexistent/pw"], r"/nonexistent/pw does not exist"),
        (["a", "--password-file", "/nonexistent/pw"], r"--password-file only makes sense with"),
        (["a", "--key-type", "dsa"], r"argument --key-type: invalid choice: 'dsa'"),
    ],
)
def test_issue_with_bad_input_exits_2_and_touches_nothing(
    run: Run, ca: Path, argv: list[str], message: str
) -> None:
    before = snapshot(ca)
    refused(run("issue", *argv, "--dir", ca, "--client"), message)
    assert snapshot(ca) == before


@pytest.mark.parametrize("force", [(), ("--force",)], ids=["plain", "force"])
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("homepage-chain", r"name 'homepage-chain' ends in '-chain': its certificate "
         r"homepage-chain\.crt would be the chain file of 'homepage' \(homepage-chain\.crt\); "
         r"pick a name that does not end in -chain, e\.g\. homepage-2$"),
        ("nobody-yet-chain", r"would be the chain file of 'nobody-yet'"),  # X need not exist
        ("global", r"name 'global' is reserved: global\.\* files belong to the CA directory"),
        ("index", r"name 'index' is reserved"),
        ("crl", r"name 'crl' is reserved"),
        ("rogue-ca", r"name 'rogue-ca' is reserved"),
    ],
)  # fmt: skip
def test_issue_refuses_a_name_whose_files_belong_to_another_identity(
    run: Run, ca: Path, name: str, message: str, force: tuple[str, ...]
) -> None:
    assert run("issue", "homepage", "--dir", ca, "--both", "--dns", "localhost")[0] == 0
    before = snapshot(ca)
    refused(run("issue", name, "--dir", ca, "--client", *force), message)
    assert snapshot(ca) == before
    assert load(ca, "homepage").chain  # homepage's chain file is still its own


def test_issue_with_empty_password_file_exits_2_and_touches_nothing(
    run: Run, ca: Path, tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("\n")
    before = snapshot(ca)
    result = run("issue", "a", "--dir", ca, "--client", "--p12", "--password-file", tmp_path / "pw")
    refused(result, r"password file .*pw is empty")
    assert snapshot(ca) == before


def test_issue_without_a_ca_exits_2_and_creates_nothing(run: Run, tmp_path: Path) -> None:
    refused(
        run("issue", "a", "--dir", tmp_path / "none", "--client"),
        r"no CA in .*none \(global\.crt and global\.key missing\); run `pki init --dir",
    )
    assert not (tmp_path / "none").exists()


def test_issue_with_garbled_global_key_names_the_file_and_touches_nothing(
    run: Run, ca: Path
) -> None:
    (ca / "global.key").write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n")
    before = snapshot(ca)
    refused(
        run("issue", "a", "--dir", ca, "--client"),
        r"global\.key is not a readable PEM private key; restore it from a backup",
    )
    assert snapshot(ca) == before


def test_issue_with_unreadable_global_key_names_the_file(run: Run, ca: Path) -> None:
    (ca / "global.key").unlink()
    (ca / "global.key").mkdir()
    refused(run("issue", "a", "--dir", ca, "--client"), r"global\.key is a directory")


def test_issue_with_a_key_of_another_ca_is_refused(run: Run, ca: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    assert run("init", "--dir", other)[0] == 0
    shutil.copy(other / "global.key", ca / "global.key")
    refused(
        run("issue", "a", "--dir", ca, "--client"),
        r"global\.key does not match the certificate in .*global",
    )


def test_reissue_without_force_exits_2_and_touches_nothing(run: Run, ca: Path) -> None:
    assert run("issue", "svc", "--dir", ca, "--server")[0] == 0
    before = snapshot(ca)
    refused(
        run("issue", "svc", "--dir", ca, "--server"),
        r"svc was already issued \(svc\.key, svc\.crt, svc-chain\.crt\); pass --force",
    )
    assert snapshot(ca) == before


def test_issue_needs_exactly_one_profile(run: Run, ca: Path) -> None:
    refused(run("issue", "a", "--dir", ca), r"one of the arguments --server --client --both")
    refused(run("issue", "a", "--dir", ca, "--client", "--server"), r"not allowed with argument")


# --- revoke and crl ---------------------------------------------------------------------------


def test_revoke_by_name_lists_the_serial_with_its_reason_in_a_new_crl(run: Run, ca: Path) -> None:
    assert run("issue", "svc", "--dir", ca, "--client")[0] == 0
    serial = store.load_cert(ca / "svc.crt").serial_number
    code, out, _ = run("revoke", "svc", "--dir", ca, "--reason", "keyCompromise")
    assert code == 0
    assert f"revoked svc (serial {format_serial(serial)}, keyCompromise)" in out
    crl = store.load_crl(ca / "crl.pem")
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2


def test_revoke_by_serial_in_colon_hex(run: Run, ca: Path) -> None:
    assert run("issue", "svc", "--dir", ca, "--client")[0] == 0
    serial = store.load_cert(ca / "svc.crt").serial_number
    colon_hex = format_serial(serial).lower()
    colon_hex = ":".join(colon_hex[i : i + 2] for i in range(0, len(colon_hex), 2))
    assert run("revoke", colon_hex, "--dir", ca)[0] == 0
    assert store.load_crl(ca / "crl.pem").get_revoked_certificate_by_serial_number(serial)


def test_revoke_unknown_name_exits_2_and_touches_nothing(run: Run, ca: Path) -> None:
    before = snapshot(ca)
    refused(run("revoke", "nobody", "--dir", ca), r"no certificate named or with serial 'nobody'")
    assert snapshot(ca) == before


def test_revoke_twice_exits_2_and_touches_nothing(run: Run, ca: Path) -> None:
    assert run("issue", "svc", "--dir", ca, "--client")[0] == 0
    assert run("revoke", "svc", "--dir", ca)[0] == 0
    before = snapshot(ca)
    refused(run("revoke", "svc", "--dir", ca), r"svc is already revoked \(serial .*unspecified\)")
    assert snapshot(ca) == before


def test_revoke_with_unknown_reason_exits_2(run: Run, ca: Path) -> None:
    refused(run("revoke", "svc", "--dir", ca, "--reason", "bored"), r"invalid choice: 'bored'")


def test_crl_resigns_with_a_new_number_and_next_update(run: Run, ca: Path) -> None:
    start = datetime.datetime.now(datetime.UTC)
    code, out, _ = run("crl", "--dir", ca, "--days", "2")
    assert code == 0
    assert "CRL number 2, 0 revoked, next update in 2 days" in out
    crl = store.load_crl(ca / "crl.pem")
    assert crl.next_update_utc is not None
    assert (
        start - datetime.timedelta(seconds=1) <= crl.next_update_utc - 2 * DAY <= start + DAY / 24
    )


def test_crl_without_a_ca_exits_2(run: Run, tmp_path: Path) -> None:
    refused(run("crl", "--dir", tmp_path), r"no CA in .*run `pki init")
    assert list(tmp_path.iterdir()) == []


# --- inspect ----------------------------------------------------------------------------------


def test_inspect_chain_prints_the_dn_a_policy_matches_and_lists_the_rest(
    run: Run, demo_pki: Path
) -> None:
    code, out, _ = run("inspect", demo_pki / "homepage-chain.crt")
    leaf, global_ca = store.load_certs(demo_pki / "homepage-chain.crt")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"{demo_pki / 'homepage-chain.crt'}: certificate 1 of 2"
    assert lines[1] == "  subject DN:   CN=homepage.internal,OU=Services,O=Example"
    assert lines[2] == "  issuer DN:    CN=Example Global CA,O=Example"
    assert f"  serial:       {format_serial(leaf.serial_number)}" in lines
    assert f"  not after:    {format_time(leaf.not_valid_after_utc)}" in lines
    assert "  days left:    364" in lines or "  days left:    365" in lines
    assert "  EKU:          serverAuth, clientAuth" in lines
    assert "  SAN:          DNS:homepage.internal, DNS:localhost, IP:127.0.0.1, IP:::1" in lines
    assert "  key usage:    digitalSignature" in lines
    assert "  CA:           CA:FALSE" in lines
    assert r"  policy regex: CN=homepage\.internal,OU=Services,O=Example" in lines
    fingerprint = leaf.fingerprint(leaf.signature_hash_algorithm).hex(":").upper()  # type: ignore[arg-type]
    assert f"  SHA-256:      {fingerprint}" in lines
    assert lines[-1].startswith(
        "  cert 2:       CN=Example Global CA,O=Example (CA:TRUE, pathlen 0"
    )
    assert global_ca.subject.rfc4514_string() in lines[-1]


def test_inspect_crl_lists_revoked_serials_and_reasons(run: Run, ca: Path) -> None:
    assert run("issue", "svc", "--dir", ca, "--client")[0] == 0
    assert run("revoke", "svc", "--dir", ca, "--reason", "superseded")[0] == 0
    serial = format_serial(store.load_cert(ca / "svc.crt").serial_number)
    code, out, _ = run("inspect", ca / "crl.pem")
    assert code == 0
    assert "  issuer DN:    CN=Example Global CA,O=Example" in out
    assert "  CRL number:   2" in out
    assert "  revoked:      1" in out
    assert re.search(rf"^    {serial}  \w{{3}} [ \d]\d .* GMT  superseded$", out, re.MULTILINE)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.crt", None, r"missing\.crt does not exist"),
        ("junk.crt", b"junk", r"junk\.crt holds no PEM or DER certificate"),
        ("svc.key", b"-----BEGIN PRIVATE KEY-----\n", r"svc\.key is a private key; inspect"),
    ],
)
def test_inspect_bad_file_exits_2(
    run: Run, tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    if content is not None:
        (tmp_path / name).write_bytes(content)
    refused(run("inspect", tmp_path / name), message)


# --- verify -----------------------------------------------------------------------------------


def write_leaf(d: Path, name: str, issued: Issued) -> Path:
    (d / f"{name}-chain.crt").write_bytes(store.encode_certs(issued.chain_file_certs))
    return d / f"{name}-chain.crt"


def test_verify_accepts_homepage_as_client_with_crl_and_policy(run: Run, demo_pki: Path) -> None:
    code, out, _ = run(
        "verify", demo_pki / "homepage-chain.crt", "--dir", demo_pki,
        "--policy", r"CN=homepage\.internal,OU=Services,O=Example",
    )  # fmt: skip
    assert code == 0
    assert out.startswith(
        "OK: CN=homepage.internal,OU=Services,O=Example would be accepted as a client certificate"
    )
    assert (
        "chain: CN=homepage.internal,OU=Services,O=Example <- CN=Example Global CA,O=Example "
        "<- CN=Example Root CA,O=Example" in out
    )
    assert "not revoked (CRL number 1" in out
    assert "DN matches policy" in out


def test_verify_accepts_userservice_as_server_for_its_hostnames(run: Run, demo_pki: Path) -> None:
    for host in ("localhost", "userservice.internal", "127.0.0.1", "::1"):
        code, out, _ = run(
            "verify", demo_pki / "userservice.crt", "--dir", demo_pki,
            "--purpose", "server", "--hostname", host,
        )  # fmt: skip
        assert code == 0, out
        assert f"covers hostname {host}" in out


def test_verify_with_explicit_ca_and_untrusted(run: Run, demo_pki: Path) -> None:
    code, out, _ = run(
        "verify", demo_pki / "ops.crt", "--ca", demo_pki / "root.crt",
        "--untrusted", demo_pki / "global.crt",
    )  # fmt: skip
    assert code == 0
    assert "revocation not checked (no CRL given)" in out


@pytest.mark.parametrize(
    ("cert", "extra", "reason"),
    [
        (
            "rogue-chain.crt",
            [],
            r"untrusted chain: .* was issued by 'CN=Rogue Root CA,O=Example', which is neither",
        ),
        ("userservice.crt", [], r"wrong purpose: not valid for client use \(.*: serverAuth\)"),
        ("eventservice.crt", ["--purpose", "server"], r"wrong purpose: not valid for server use"),
        (
            "eventservice-chain.crt",
            ["--policy", r"CN=homepage\.internal,OU=Services,O=Example"],
            r"DN CN=eventservice\.internal,OU=Services,O=Example does not match policy",
        ),
        (
            "homepage.crt",
            ["--policy", "CN=homepage"],
            r"does not match policy 'CN=homepage'",
        ),
        (
            "homepage.crt",
            ["--purpose", "server", "--hostname", "userservice.internal"],
            r"hostname userservice\.internal is not in the certificate's subjectAltName",
        ),
    ],
)
def test_verify_refuses_with_the_reason_and_exit_1(
    run: Run, demo_pki: Path, cert: str, extra: list[str], reason: str
) -> None:
    code, out, err = run("verify", demo_pki / cert, "--dir", demo_pki, *extra)
    assert (code, err) == (1, "")
    assert out.startswith(f"REFUSED: {demo_pki / cert}: ")
    assert re.search(reason, out), out


def test_verify_refuses_expired_and_not_yet_valid_with_the_dates(
    run: Run, ca: Path, tmp_path: Path
) -> None:
    global_ca = store.load_issued(ca / "global.crt", ca / "global.key", fix="")
    name = authority.make_name("svc.internal")
    old = authority.build_leaf(global_ca, name=name, profile="client", now=NOW - 40 * DAY, days=30)
    later = authority.build_leaf(
        global_ca, name=name, profile="client", not_before=NOW + 5 * DAY, days=30
    )
    code, out, _ = run("verify", write_leaf(tmp_path, "old", old), "--dir", ca)
    assert code == 1
    assert f"expired on {old.cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC" in out
    code, out, _ = run("verify", write_leaf(tmp_path, "later", later), "--dir", ca)
    assert code == 1
    assert f"not yet valid: valid from {later.cert.not_valid_before_utc:%Y-%m-%d}" in out


def test_verify_refuses_a_revoked_certificate_with_date_and_reason(run: Run, ca: Path) -> None:
    assert run("issue", "svc", "--dir", ca, "--client")[0] == 0
    assert run("verify", ca / "svc-chain.crt", "--dir", ca)[0] == 0
    assert run("revoke", "svc", "--dir", ca, "--reason", "keyCompromise")[0] == 0
    code, out, _ = run("verify", ca / "svc-chain.crt", "--dir", ca)
    assert code == 1
    assert re.search(r"revoked on \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(keyCompromise\)", out)


def test_verify_refuses_when_the_crl_is_out_of_date(run: Run, ca: Path, tmp_path: Path) -> None:
    global_ca = store.load_issued(ca / "global.crt", ca / "global.key", fix="")
    stale = authority.build_crl(global_ca, [], now=NOW - 10 * DAY, next_update_days=7)
    (tmp_path / "stale.pem").write_bytes(store.encode_crl(stale))
    assert run("issue", "svc", "--dir", ca, "--client")[0] == 0
    code, out, _ = run("verify", ca / "svc-chain.crt", "--dir", ca, "--crl", tmp_path / "stale.pem")
    assert code == 1
    assert "the CRL is past its nextUpdate" in out
    assert "`pki crl --dir DIR`" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], r"verify needs --dir DIR or --ca ROOT\.crt"),
        (["--ca", "/nonexistent/root.crt"], r"/nonexistent/root\.crt does not exist"),
        (["--dir", ".", "--policy", "CN=(", "--ca", "x"], r"--policy='CN=\(' is not a valid regul"),
        (["--ca", "x", "--hostname", "h"], r"--hostname is checked for --purpose server only"),
        (["--ca", "x", "--purpose", "both"], r"argument --purpose: invalid choice: 'both'"),
    ],
)
def test_verify_with_bad_input_exits_2(
    run: Run, demo_pki: Path, extra: list[str], message: str
) -> None:
    refused(run("verify", demo_pki / "homepage.crt", *extra), message)


# --- demo -------------------------------------------------------------------------------------

DEMO_DNS = {
    "userservice": "CN=userservice.internal,OU=Services,O=Example",
    "homepage": "CN=homepage.internal,OU=Services,O=Example",
    "eventservice": "CN=eventservice.internal,OU=Services,O=Example",
    "ops": "CN=ops.internal,OU=Operators,O=Example",
    "lb": "CN=lb.internal,OU=LoadBalancers,O=Example",
    "rogue": "CN=homepage.internal,OU=Services,O=Example",
}


def test_demo_makes_the_spec_set_with_private_keys(demo_pki: Path) -> None:
    names = {p.name for p in demo_pki.iterdir()}
    for name in DEMO_DNS:
        assert {f"{name}.key", f"{name}.crt", f"{name}-chain.crt"} <= names
        assert mode(demo_pki / f"{name}.key") == 0o600
    assert {"root.crt", "root.key", "global.crt", "global.key", "crl.pem", "rogue-ca.crt"} <= names
    assert not [n for n in names if n.startswith(".")], "no temporary files left behind"


@pytest.mark.parametrize(("name", "dn"), DEMO_DNS.items())
def test_demo_leaves_have_the_documented_dns(demo_pki: Path, name: str, dn: str) -> None:
    from mtls.dn import format_dn

    assert format_dn(store.load_cert(demo_pki / f"{name}.crt").subject) == dn


def test_demo_chains_are_leaf_plus_global_and_rogue_has_its_own_root(demo_pki: Path) -> None:
    global_ca = store.load_cert(demo_pki / "global.crt")
    for name in ("userservice", "homepage", "eventservice", "ops", "lb"):
        assert store.load_certs(demo_pki / f"{name}-chain.crt")[1:] == [global_ca]
    rogue = store.load_certs(demo_pki / "rogue-chain.crt")
    rogue_ca = store.load_cert(demo_pki / "rogue-ca.crt")
    assert len(rogue) == 1
    assert rogue[0].issuer == rogue_ca.subject
    assert rogue_ca.subject.rfc4514_string() == "CN=Rogue Root CA,O=Example"


def test_demo_twice_keeps_the_set_untouched(run: Run, demo_pki: Path, tmp_path: Path) -> None:
    d = Path(shutil.copytree(demo_pki, tmp_path / "demo", copy_function=shutil.copy2))
    before = snapshot(d)
    code, out, _ = run("demo", "--dir", d)
    assert code == 0
    assert out.startswith(f"{d} already holds the complete demo PKI; kept it")
    assert snapshot(d) == before


def test_demo_force_makes_a_new_set(run: Run, demo_pki: Path, tmp_path: Path) -> None:
    d = Path(shutil.copytree(demo_pki, tmp_path / "demo"))
    code, out, _ = run("demo", "--dir", d, "--force")
    assert code == 0
    assert f"pki inspect {d / 'homepage-chain.crt'}" in out
    assert (d / "root.crt").read_bytes() != (demo_pki / "root.crt").read_bytes()


def test_demo_over_a_partial_set_exits_2_and_touches_nothing(run: Run, ca: Path) -> None:
    before = snapshot(ca)
    refused(run("demo", "--dir", ca), r"holds part of a PKI \(root\.crt.*pass --force")
    assert snapshot(ca) == before


def test_demo_rebuilds_a_set_with_an_expired_certificate(
    run: Run, demo_pki: Path, tmp_path: Path
) -> None:
    d = Path(shutil.copytree(demo_pki, tmp_path / "demo"))
    global_ca = store.load_issued(d / "global.crt", d / "global.key", fix="")
    old = authority.build_leaf(
        global_ca,
        name=authority.make_name("lb.internal"),
        profile="client",
        now=NOW - 9 * DAY,
        days=1,
    )
    (d / "lb.crt").write_bytes(store.encode_certs([old.cert]))
    code, out, _ = run("demo", "--dir", d)
    assert code == 0
    assert "rebuilding the demo PKI" in out
    assert "lb.crt is outside its validity period" in out
    assert store.load_cert(d / "lb.crt").not_valid_after_utc > NOW


# --- the real command -------------------------------------------------------------------------


def test_python_m_pki_reports_bad_input_in_one_line_without_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pki", "issue", "a", "--dir", str(tmp_path), "--client"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"pki: no CA in {tmp_path} (global.crt and global.key missing); "
        f"run `pki init --dir {tmp_path}` first\n"
    )


def test_help_exits_0(run: Run) -> None:
    code, out, _ = run("--help")
    assert code == 0
    assert "issue" in out


# --- store ------------------------------------------------------------------------------------


def test_atomic_write_over_a_public_file_leaves_a_private_key_and_no_temp_file(
    tmp_path: Path,
) -> None:
    target = tmp_path / "x.key"
    target.write_text("old")
    target.chmod(0o644)
    store.write_atomic(target, b"new", mode=store.KEY_MODE)
    assert target.read_bytes() == b"new"
    assert mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["x.key"]


def test_atomic_write_failure_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreError, match=r"^cannot write .*file/x\.crt: Not a directory$"):
        store.write_atomic(tmp_path / "file" / "x.crt", b"data")


def test_verify_server_purpose_without_hostname_says_it_was_not_checked(
    run: Run, demo_pki: Path
) -> None:
    code, out, _ = run(
        "verify", demo_pki / "userservice.crt", "--dir", demo_pki, "--purpose", "server"
    )
    assert code == 0
    assert "hostname not checked (pass --hostname)" in out
