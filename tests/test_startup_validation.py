"""Start-up validation (the seed's validateCerts): every refusal names the file and the fix.

Most cases run against mtls.context.load_tls_state directly (fast, exact
messages); test_e2e_runtime.py proves the same refusals stop real gunicorn.
"""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mtls.errors import CertificateFileError, ConfigError
from mtls.privatefile import private_file
from mtls.revocation import CrlInfo, refuse_older_crls
from mtls.serverstate import (
    TlsState,
    build_server_context,
    check_trust_store,
    load_tls_state,
)
from mtls.settings import ServerSettings
from mtls.validation import check_files
from pki import authority
from tests.pkifiles import attacker_root, crl_pem, hidden, load_issued, write_issued

NOW = datetime.datetime.now(datetime.UTC)


def settings_for(pki: Path, chain: Path, key: Path, **extra: str) -> ServerSettings:
    env = {
        "MTLS_CERTFILE": str(chain),
        "MTLS_KEYFILE": str(key),
        "MTLS_CA_CERTS": str(pki / "root.crt"),
    }
    env.update(extra)
    return ServerSettings.from_env(env)


def userservice_settings(pki: Path, **extra: str) -> ServerSettings:
    """The demo User Service's own files, plus ``extra`` MTLS_* settings."""
    return settings_for(pki, pki / "userservice-chain.crt", pki / "userservice.key", **extra)


def server_leaf(pki: Path, **kwargs: object) -> authority.Issued:
    issuer = load_issued(pki, "global")
    return authority.build_leaf(
        issuer,
        name=authority.make_name("userservice.internal", ou="Services"),
        profile=kwargs.pop("profile", "server"),  # type: ignore[arg-type]
        dns=["localhost"],
        **kwargs,  # type: ignore[arg-type]
    )


def test_demo_server_files_validate_and_build_a_context(demo_pki: Path) -> None:
    state = load_tls_state(
        userservice_settings(
            demo_pki,
            MTLS_CRLFILE=str(demo_pki / "crl.pem"),
        )
    )
    assert state.leaf.subject.rfc4514_string() == "CN=userservice.internal,OU=Services,O=Example"
    assert state.warnings == ()


def test_missing_files_are_all_named_with_their_variable(demo_pki: Path, tmp_path: Path) -> None:
    settings = settings_for(demo_pki, tmp_path / "nope-chain.crt", tmp_path / "nope.key")
    with pytest.raises(CertificateFileError) as e:
        load_tls_state(settings)
    message = str(e.value)
    assert f"{tmp_path / 'nope-chain.crt'}: no such file (MTLS_CERTFILE)" in message
    assert f"{tmp_path / 'nope.key'}: no such file (MTLS_KEYFILE)" in message


def test_key_that_does_not_match_the_certificate_is_refused(demo_pki: Path) -> None:
    settings = settings_for(demo_pki, demo_pki / "userservice-chain.crt", demo_pki / "homepage.key")
    with pytest.raises(
        CertificateFileError,
        match=r"homepage\.key does not match the certificate in .*userservice-chain\.crt",
    ):
        load_tls_state(settings)


def test_expired_server_certificate_is_refused_with_the_date_and_the_fix(
    demo_pki: Path, tmp_path: Path
) -> None:
    past = NOW - datetime.timedelta(days=40)
    chain, key = write_issued(tmp_path, "old", server_leaf(demo_pki, now=past, days=30))
    with pytest.raises(CertificateFileError) as e:
        load_tls_state(settings_for(demo_pki, chain, key))
    expired_on = f"{x509.load_pem_x509_certificate(chain.read_bytes()).not_valid_after_utc:%F %T}"
    assert (
        f"expired on {expired_on} UTC; issue a new one with `pki issue NAME --server ...`"
        in str(e.value)
    )


def test_not_yet_valid_server_certificate_is_refused(demo_pki: Path, tmp_path: Path) -> None:
    future = NOW + datetime.timedelta(days=2)
    chain, key = write_issued(tmp_path, "future", server_leaf(demo_pki, now=future, days=30))
    with pytest.raises(CertificateFileError, match="not yet valid: valid from"):
        load_tls_state(settings_for(demo_pki, chain, key))


def test_certificate_expiring_within_30_days_starts_with_a_warning(
    demo_pki: Path, tmp_path: Path
) -> None:
    chain, key = write_issued(tmp_path, "soon", server_leaf(demo_pki, days=10))
    state = load_tls_state(settings_for(demo_pki, chain, key))
    assert len(state.warnings) == 1
    assert "expires in 9 days" in state.warnings[0] or "expires in 10 days" in state.warnings[0]


def test_a_24h_certificate_with_mtls_cert_warn_8h_warns_only_when_renewals_were_missed(
    demo_pki: Path, tmp_path: Path
) -> None:
    """The default horizons (30 days at start-up, 7 in /healthz) would warn all its life."""
    from mtls.health import assess

    day = datetime.timedelta(hours=24)
    files = write_issued(tmp_path, "fresh", server_leaf(demo_pki, valid=day))
    default = load_tls_state(settings_for(demo_pki, *files))
    assert "expires in 0 days" in default.warnings[0]
    assert assess(default, None, NOW).status == "warn"  # SPEC: under 7 days
    state = load_tls_state(settings_for(demo_pki, *files, MTLS_CERT_WARN="8h"))
    assert state.warnings == ()
    assert assess(state, None, NOW).status == "ok"
    late = assess(state, None, NOW + datetime.timedelta(hours=17))  # about 7 h left
    assert late.status == "warn"
    assert late.problems[0].startswith("the server certificate expires in 7.")


def test_mtls_cert_warn_takes_seconds_or_a_unit_and_names_itself_when_wrong() -> None:
    base = {"MTLS_CERTFILE": "/c", "MTLS_KEYFILE": "/k", "MTLS_CA_CERTS": "/r"}
    assert ServerSettings.from_env({**base, "MTLS_CERT_WARN": "8h"}).cert_warn == 8 * 3600
    assert ServerSettings.from_env({**base, "MTLS_CERT_WARN": "90"}).cert_warn == 90
    assert ServerSettings.from_env(base).cert_warn == 7 * 86400
    with pytest.raises(ConfigError, match=r"MTLS_CERT_WARN='soon' is not a duration"):
        ServerSettings.from_env({**base, "MTLS_CERT_WARN": "soon"})


def test_client_only_certificate_cannot_serve(demo_pki: Path) -> None:
    settings = settings_for(
        demo_pki, demo_pki / "eventservice-chain.crt", demo_pki / "eventservice.key"
    )
    with pytest.raises(CertificateFileError, match="lacks the serverAuth extended key usage"):
        load_tls_state(settings)


def test_chain_that_does_not_lead_to_the_bundle_is_refused(demo_pki: Path) -> None:
    settings = settings_for(demo_pki, demo_pki / "rogue-chain.crt", demo_pki / "rogue.key")
    with pytest.raises(
        CertificateFileError, match=r"is neither in .*rogue-chain\.crt nor a root in .*root\.crt"
    ):
        load_tls_state(settings)


def test_chain_file_without_the_intermediate_is_refused(demo_pki: Path, tmp_path: Path) -> None:
    leaf_only = tmp_path / "leaf.crt"
    leaf_only.write_bytes((demo_pki / "userservice.crt").read_bytes())
    settings = settings_for(demo_pki, leaf_only, demo_pki / "userservice.key")
    with pytest.raises(CertificateFileError, match=r"append the intermediate to .*leaf\.crt"):
        load_tls_state(settings)


def test_bundle_without_any_ca_is_refused(demo_pki: Path) -> None:
    settings = userservice_settings(
        demo_pki,
        MTLS_CA_CERTS=str(demo_pki / "homepage.crt"),
    )
    with pytest.raises(CertificateFileError, match="holds no CA certificate"):
        load_tls_state(settings)


def test_intermediate_in_the_bundle_is_a_warning(demo_pki: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(
        (demo_pki / "root.crt").read_bytes() + (demo_pki / "global.crt").read_bytes()
    )
    state = load_tls_state(
        userservice_settings(
            demo_pki,
            MTLS_CA_CERTS=str(bundle),
        )
    )
    assert any(
        "which is not a root: it only helps build paths to a root" in w for w in state.warnings
    )


def test_crl_signed_by_another_ca_is_refused(demo_pki: Path, tmp_path: Path) -> None:
    rogue_ca = load_issued(demo_pki, "rogue-ca") if (demo_pki / "rogue-ca.key").exists() else None
    issuer = rogue_ca or authority.build_root()
    crl = authority.build_crl(issuer, [])
    path = tmp_path / "crl.pem"
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    settings = userservice_settings(
        demo_pki,
        MTLS_CRLFILE=str(path),
    )
    with pytest.raises(CertificateFileError, match="is not signed by a CA of this chain"):
        load_tls_state(settings)


def test_crl_past_its_next_update_is_refused(demo_pki: Path, tmp_path: Path) -> None:
    crl = authority.build_crl(
        load_issued(demo_pki, "global"), [], now=NOW - datetime.timedelta(days=9)
    )
    path = tmp_path / "crl.pem"
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    settings = userservice_settings(
        demo_pki,
        MTLS_CRLFILE=str(path),
    )
    with pytest.raises(
        CertificateFileError, match=r"past its nextUpdate .* refresh it with `pki crl"
    ):
        load_tls_state(settings)


def test_unreadable_crl_is_refused(demo_pki: Path, tmp_path: Path) -> None:
    path = tmp_path / "crl.pem"
    path.write_text("not a crl")
    settings = userservice_settings(
        demo_pki,
        MTLS_CRLFILE=str(path),
    )
    with pytest.raises(CertificateFileError, match="not a PEM CRL"):
        load_tls_state(settings)


def test_encrypted_server_key_is_refused_with_the_reason(demo_pki: Path, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key((demo_pki / "userservice.key").read_bytes(), None)
    encrypted = tmp_path / "enc.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    settings = settings_for(demo_pki, demo_pki / "userservice-chain.crt", encrypted)
    with pytest.raises(CertificateFileError, match="the key is encrypted"):
        load_tls_state(settings)


def test_every_bad_setting_is_reported_at_once_naming_its_variable() -> None:
    with pytest.raises(ConfigError) as e:
        ServerSettings.from_env(
            {
                "MTLS_CLIENT_AUTH": "sometimes",
                "MTLS_MIN_VERSION": "TLSv1.1",
                "MTLS_CIPHERS": "NOT-A-CIPHER",
                "MTLS_PROXY_PROTOCOL": "v3",
                "MTLS_PROXY_ALLOW_FROM": "10.0.0.0/8 nonsense",
                "MTLS_HANDSHAKE_TIMEOUT": "-1",
            }
        )
    message = str(e.value)
    for fragment in (
        "MTLS_CERTFILE is not set",
        "MTLS_KEYFILE is not set",
        "MTLS_CA_CERTS is not set",
        "MTLS_CLIENT_AUTH='sometimes' is not one of required, optional",
        "MTLS_MIN_VERSION='TLSv1.1' is not one of TLSv1.2, TLSv1.3",
        "MTLS_CIPHERS='NOT-A-CIPHER' selects no cipher",
        "MTLS_PROXY_PROTOCOL='v3' is not one of off, v1, v2, auto",
        "MTLS_PROXY_ALLOW_FROM has 'nonsense'",
        "MTLS_HANDSHAKE_TIMEOUT='-1' must be between 0.1 and 3600 seconds",
    ):
        assert fragment in message


def test_proxy_mode_without_allowed_addresses_is_refused(demo_pki: Path) -> None:
    with pytest.raises(ConfigError, match="MTLS_PROXY_PROTOCOL=v2 needs MTLS_PROXY_ALLOW_FROM"):
        settings_for(demo_pki, demo_pki / "a", demo_pki / "b", MTLS_PROXY_PROTOCOL="v2")


def test_proxy_allow_list_matches_ipv4_ipv6_and_mapped_addresses(demo_pki: Path) -> None:
    settings = settings_for(
        demo_pki,
        demo_pki / "a",
        demo_pki / "b",
        MTLS_PROXY_PROTOCOL="auto",
        MTLS_PROXY_ALLOW_FROM="127.0.0.2/32, fd00::/8",
    )
    assert settings.proxy_allowed("127.0.0.2")
    assert settings.proxy_allowed("::ffff:127.0.0.2")
    assert settings.proxy_allowed("fd00::1")
    assert not settings.proxy_allowed("127.0.0.3")
    assert not settings.proxy_allowed("not-an-ip")


def test_resumed_session_of_a_revoked_or_expired_peer_is_refused(
    demo_pki: Path, tmp_path: Path
) -> None:
    pki = tmp_path / "pki"
    shutil.copytree(demo_pki, pki)
    global_ca = load_issued(pki, "global")
    homepage = x509.load_pem_x509_certificate((pki / "homepage.crt").read_bytes())
    crl = authority.build_crl(
        global_ca,
        [authority.RevokedEntry(serial=homepage.serial_number, revoked_at=NOW, reason=None)],
    )
    (pki / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    state = load_tls_state(
        userservice_settings(
            pki,
            MTLS_CRLFILE=str(pki / "crl.pem"),
        )
    )
    revoked = state.refuse_peer(homepage, NOW, what="resumed session")
    assert revoked is not None
    assert (revoked.reason, revoked.detail) == (
        "revoked",
        "resumed session for a revoked certificate",
    )
    other = x509.load_pem_x509_certificate((pki / "eventservice.crt").read_bytes())
    assert state.refuse_peer(other, NOW, what="resumed session") is None
    later = other.not_valid_after_utc + datetime.timedelta(seconds=1)
    expired = state.refuse_peer(other, later, what="kept-alive connection")
    assert expired is not None
    assert expired.reason == "expired"
    assert expired.detail == (
        "kept-alive connection for a certificate that expired on "
        f"{other.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
    )


def test_bundle_with_an_intermediate_but_no_root_is_refused(demo_pki: Path) -> None:
    # OpenSSL (no partial chains) would refuse every client: fail at start-up instead.
    settings = userservice_settings(
        demo_pki,
        MTLS_CA_CERTS=str(demo_pki / "global.crt"),
    )
    with pytest.raises(CertificateFileError, match=r"holds no root \(self-signed\) CA"):
        load_tls_state(settings)


def test_certificate_hidden_in_the_crl_file_is_refused(demo_pki: Path, tmp_path: Path) -> None:
    # ssl would trust any certificate in the CRL file as a CA: an evil root
    # there could mint homepage's DN. The file may hold CRLs only.
    evil = authority.build_root(name=authority.make_name("Evil Root"))
    crl_file = tmp_path / "crl.pem"
    crl_file.write_bytes(
        (demo_pki / "crl.pem").read_bytes()
        + authority.build_crl(evil, []).public_bytes(serialization.Encoding.PEM)
        + evil.cert.public_bytes(serialization.Encoding.PEM)
    )
    settings = userservice_settings(
        demo_pki,
        MTLS_CRLFILE=str(crl_file),
    )
    with pytest.raises(CertificateFileError) as e:
        load_tls_state(settings)
    assert "holds a CERTIFICATE block; ssl would trust a certificate there as a CA" in str(e.value)
    assert "the CRL from 'CN=Evil Root,O=Example' is not signed by a CA of this chain" in str(
        e.value
    )


def test_every_crl_in_the_file_counts(demo_pki: Path, tmp_path: Path) -> None:
    global_ca = load_issued(demo_pki, "global")
    homepage = x509.load_pem_x509_certificate((demo_pki / "homepage.crt").read_bytes())
    revoked = authority.RevokedEntry(serial=homepage.serial_number, revoked_at=NOW)
    crl_file = tmp_path / "crl.pem"
    crl_file.write_bytes(
        (demo_pki / "crl.pem").read_bytes()
        + authority.build_crl(global_ca, [revoked], number=2).public_bytes(
            serialization.Encoding.PEM
        )
    )
    state = load_tls_state(userservice_settings(demo_pki, MTLS_CRLFILE=str(crl_file)))
    assert homepage.serial_number in state.revoked_serials


def test_rsa_only_suites_with_an_ec_key_are_refused_unless_tls13_only(demo_pki: Path) -> None:
    seed_suite = "ECDHE-RSA-AES256-GCM-SHA384"
    args = (demo_pki, demo_pki / "userservice-chain.crt", demo_pki / "userservice.key")
    with pytest.raises(CertificateFileError, match=r"offers no TLS 1\.2 suite for the EC key"):
        load_tls_state(settings_for(*args, MTLS_CIPHERS=seed_suite))
    load_tls_state(settings_for(*args, MTLS_CIPHERS=seed_suite, MTLS_MIN_VERSION="TLSv1.3"))
    load_tls_state(settings_for(*args, MTLS_CIPHERS="ECDHE-ECDSA-AES256-GCM-SHA384"))


def test_resumed_session_is_refused_once_the_crl_is_stale(demo_pki: Path) -> None:
    state = load_tls_state(userservice_settings(demo_pki, MTLS_CRLFILE=str(demo_pki / "crl.pem")))
    assert state.crl_next_update is not None
    peer = x509.load_pem_x509_certificate((demo_pki / "eventservice.crt").read_bytes())
    assert state.refuse_peer(peer, state.crl_next_update, what="resumed session") is None
    stale = state.crl_next_update + datetime.timedelta(seconds=1)
    refusal = state.refuse_peer(peer, stale, what="resumed session")
    assert refusal is not None
    assert refusal.reason == "crl_stale"
    assert refusal.detail == (
        f"resumed session, but the CRL is past its nextUpdate ({state.crl_next_update:%F %T} UTC), "
        "so every client is refused until it is re-signed; refresh it with `pki crl --dir DIR`"
    )


def load_with_crl_file(pki: Path, directory: Path, content: bytes) -> CertificateFileError:
    crl_file = directory / "crl.pem"
    crl_file.write_bytes(content)
    with pytest.raises(CertificateFileError) as e:
        load_tls_state(userservice_settings(pki, MTLS_CRLFILE=str(crl_file)))
    assert str(crl_file) in str(e.value)
    return e.value


def test_certificate_behind_a_begin_line_with_trailing_space_is_refused(
    demo_pki: Path, tmp_path: Path
) -> None:
    evil = attacker_root().cert.public_bytes(serialization.Encoding.PEM)
    legit = (demo_pki / "crl.pem").read_bytes()
    error = load_with_crl_file(
        demo_pki, tmp_path, legit + evil.replace(b"CERTIFICATE-----\n", b"CERTIFICATE----- \n", 1)
    )
    assert "holds a CERTIFICATE block; ssl would trust a certificate there as a CA" in str(error)
    line = len(legit.splitlines()) + 1
    assert f"crl.pem, line {line}: holds a CERTIFICATE block" in str(error)


def test_junk_block_with_any_label_is_refused(demo_pki: Path, tmp_path: Path) -> None:
    junk = b"-----BEGIN CERTIFICATE-----\t\r\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    lower = b"-----BEGIN private key-----\nAAAA\n-----END private key-----\n"
    error = load_with_crl_file(
        demo_pki, tmp_path, (demo_pki / "crl.pem").read_bytes() + junk + lower
    )
    assert "holds a CERTIFICATE block" in str(error)
    assert "holds a private key block" in str(error)


def test_crl_block_hidden_the_same_way_from_the_attackers_root_is_refused(
    demo_pki: Path, tmp_path: Path
) -> None:
    content = (demo_pki / "crl.pem").read_bytes() + hidden(crl_pem(attacker_root()))
    error = load_with_crl_file(demo_pki, tmp_path, content)
    assert (
        "the CRL from 'CN=Attacker Root CA,O=Example' is not signed by a CA of this chain"
        in str(error)
    )


def test_crl_signed_by_a_leaf_is_refused(demo_pki: Path, tmp_path: Path) -> None:
    # The server's own certificate has a key and a subject, but is no CA.
    error = load_with_crl_file(demo_pki, tmp_path, crl_pem(load_issued(demo_pki, "userservice")))
    assert (
        "the CRL from 'CN=userservice.internal,OU=Services,O=Example' is not signed by a CA"
        in str(error)
    )


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"-----BEGIN X509 CRL-----\n!!not base64!!\n-----END X509 CRL-----\n", "cannot be read"),
        (b"-----BEGIN X509 CRL-----\nMAMCAQE=\n-----END X509 CRL-----\n", "cannot be read"),
        (b"-----BEGIN X509 CRL-----\nMAMCAQE=\n", "block with no END line"),
        (b"\x30\x82\x01\x00 DER, not PEM", "not a PEM CRL"),
    ],
)
def test_a_crl_that_cannot_be_fully_read_is_a_problem_not_an_exception(
    demo_pki: Path, tmp_path: Path, content: bytes, reason: str
) -> None:
    assert reason in str(load_with_crl_file(demo_pki, tmp_path, content))


def test_text_outside_the_crl_blocks_is_refused(demo_pki: Path, tmp_path: Path) -> None:
    content = b"Certificate Revocation List:\n" + (demo_pki / "crl.pem").read_bytes()
    error = load_with_crl_file(demo_pki, tmp_path, content)
    assert "crl.pem, line 1: text outside the PEM blocks" in str(error)


def test_crl_blocks_with_trailing_whitespace_and_crlf_are_read_like_openssl(
    demo_pki: Path, tmp_path: Path
) -> None:
    homepage = x509.load_pem_x509_certificate((demo_pki / "homepage.crt").read_bytes())
    revoked = authority.RevokedEntry(serial=homepage.serial_number, revoked_at=NOW)
    newer = authority.build_crl(load_issued(demo_pki, "global"), [revoked], number=2)
    crl_file = tmp_path / "crl.pem"
    crl_file.write_bytes(
        b"\n"
        + (demo_pki / "crl.pem").read_bytes().replace(b"\n", b"\r\n")
        + hidden(newer.public_bytes(serialization.Encoding.PEM))
    )
    state = load_tls_state(userservice_settings(demo_pki, MTLS_CRLFILE=str(crl_file)))
    assert homepage.serial_number in state.revoked_serials
    assert state.context.cert_store_stats() == {"x509": 1, "crl": 2, "x509_ca": 1}
    root = x509.load_pem_x509_certificate((demo_pki / "root.crt").read_bytes())
    assert state.context.get_ca_certs(binary_form=True) == [
        root.public_bytes(serialization.Encoding.DER)
    ]


def test_trust_store_with_anything_beyond_the_bundle_is_refused(demo_pki: Path) -> None:
    settings = userservice_settings(demo_pki, MTLS_CRLFILE=str(demo_pki / "crl.pem"))
    raw = {p: p.read_bytes() for p in settings.files}
    files = check_files(settings, raw, NOW)
    ctx = build_server_context(settings, files)
    check_trust_store(settings, ctx, files)  # as built: exactly the bundle and the CRL
    evil = attacker_root()
    ctx.load_verify_locations(cadata=evil.cert.public_bytes(serialization.Encoding.DER))
    with pytest.raises(CertificateFileError, match="refusing a trust store that differs"):
        check_trust_store(settings, ctx, files)
    with private_file(crl_pem(evil), "crl") as path:
        ctx.load_verify_locations(cafile=path)
    with pytest.raises(CertificateFileError, match="2 CRLs, not the 1 validated from"):
        check_trust_store(settings, ctx, files)


@pytest.mark.parametrize("memfd", [True, False])
def test_private_file_is_readable_by_path_and_gone_afterwards(memfd: bool) -> None:
    with private_file(b"secret", "key", memfd=memfd) as path:
        assert Path(path).read_bytes() == b"secret"
        if not memfd:
            assert Path(path).stat().st_mode & 0o777 == 0o600
            assert Path(path).parent.stat().st_mode & 0o777 == 0o700
    assert not Path(path).exists()


def crl_state(pki: Path, directory: Path, **kwargs: object) -> TlsState:
    crl_file = directory / "crl.pem"
    crl_file.write_bytes(crl_pem(load_issued(pki, "global"), **kwargs))
    return load_tls_state(userservice_settings(pki, MTLS_CRLFILE=str(crl_file)))


def test_an_older_crl_is_refused_on_reload(demo_pki: Path, tmp_path: Path) -> None:
    newer = crl_state(demo_pki, tmp_path, number=5)
    crl_file = tmp_path / "crl.pem"
    crl_file.write_bytes(crl_pem(load_issued(demo_pki, "global"), number=4))
    settings = userservice_settings(demo_pki, MTLS_CRLFILE=str(crl_file))
    with pytest.raises(CertificateFileError) as e:
        load_tls_state(settings, previous=newer)
    message = str(e.value)
    assert f"{crl_file}: the CRL from 'CN=Example Global CA,O=Example' (CRL number 4, " in message
    assert "is older than the one in use (CRL number 5, thisUpdate " in str(e.value)
    assert "refused; run `pki crl --dir DIR` to write a current one" in str(e.value)
    load_tls_state(settings)  # a restart has nothing to compare with


def test_same_or_newer_crl_is_accepted_on_reload(demo_pki: Path, tmp_path: Path) -> None:
    same = crl_state(demo_pki, tmp_path)
    settings = same.settings
    assert load_tls_state(settings, previous=same).crls == same.crls
    crl_file = tmp_path / "b.pem"
    crl_file.write_bytes(crl_pem(load_issued(demo_pki, "global"), number=2))
    newer = load_tls_state(
        userservice_settings(demo_pki, MTLS_CRLFILE=str(crl_file)), previous=same
    )
    assert newer.crls[0].number == 2


def info(number: int | None, hours_ago: int, name: str = "Global") -> CrlInfo:
    issuer = authority.make_name(name)
    moment = NOW - datetime.timedelta(hours=hours_ago)
    return CrlInfo(issuer, name, number, moment)


@pytest.mark.parametrize(
    ("loaded", "candidate", "refused"),
    [
        ([info(3, 0)], [info(2, 0)], True),  # lower number, even if issued later
        ([info(3, 5)], [info(2, 0)], True),
        ([info(3, 0)], [info(3, 5)], False),  # equal number: the same CRL
        ([info(3, 0)], [info(4, 5)], False),
        ([info(None, 0)], [info(None, 1)], True),  # no numbers: thisUpdate decides
        ([info(None, 1)], [info(None, 1)], False),
        ([info(None, 1)], [info(None, 0)], False),
        ([info(3, 0)], [info(None, 1)], True),  # one without a number: thisUpdate
        ([info(3, 0)], [info(1, 0, "Other")], False),  # another issuer: nothing to compare
        ([info(1, 9), info(3, 0)], [info(2, 0), info(3, 0)], False),  # newest of each set
        ([info(1, 9), info(3, 0)], [info(2, 0)], True),
    ],
)
def test_crl_freshness_compares_the_newest_per_issuer(
    loaded: list[CrlInfo], candidate: list[CrlInfo], refused: bool
) -> None:
    problems = refuse_older_crls(Path("crl.pem"), loaded, candidate)
    assert bool(problems) is refused
    assert all(p.startswith("crl.pem: the CRL from ") for p in problems)
