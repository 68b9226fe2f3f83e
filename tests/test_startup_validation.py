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

from mtls.context import load_tls_state
from mtls.errors import CertificateFileError, ConfigError
from mtls.settings import ServerSettings
from pki import authority

NOW = datetime.datetime.now(datetime.UTC)


def load_issued(pki: Path, name: str) -> authority.Issued:
    cert = x509.load_pem_x509_certificate((pki / f"{name}.crt").read_bytes())
    key = serialization.load_pem_private_key((pki / f"{name}.key").read_bytes(), None)
    return authority.Issued(cert=cert, key=key)  # type: ignore[arg-type]


def write_issued(directory: Path, name: str, issued: authority.Issued) -> tuple[Path, Path]:
    chain = directory / f"{name}-chain.crt"
    key = directory / f"{name}.key"
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (issued.cert, *issued.chain))
    chain.write_bytes(pem)
    key.write_bytes(
        issued.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key.chmod(0o600)
    return chain, key


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
    expired_on = (past + datetime.timedelta(days=30)).strftime("%Y-%m-%d")
    assert f"expired on {expired_on}; issue a new one with `pki issue NAME --server ...`" in str(
        e.value
    )


def test_not_yet_valid_server_certificate_is_refused(demo_pki: Path, tmp_path: Path) -> None:
    future = NOW + datetime.timedelta(days=2)
    chain, key = write_issued(tmp_path, "future", server_leaf(demo_pki, now=future, days=30))
    with pytest.raises(CertificateFileError, match="is not valid before"):
        load_tls_state(settings_for(demo_pki, chain, key))


def test_certificate_expiring_within_30_days_starts_with_a_warning(
    demo_pki: Path, tmp_path: Path
) -> None:
    chain, key = write_issued(tmp_path, "soon", server_leaf(demo_pki, days=10))
    state = load_tls_state(settings_for(demo_pki, chain, key))
    assert len(state.warnings) == 1
    assert "expires in 9 days" in state.warnings[0] or "expires in 10 days" in state.warnings[0]


def test_client_only_certificate_cannot_serve(demo_pki: Path) -> None:
    settings = settings_for(
        demo_pki, demo_pki / "eventservice-chain.crt", demo_pki / "eventservice.key"
    )
    with pytest.raises(CertificateFileError, match="lacks the serverAuth extended key usage"):
        load_tls_state(settings)


def test_chain_that_does_not_lead_to_the_bundle_is_refused(demo_pki: Path) -> None:
    settings = settings_for(demo_pki, demo_pki / "rogue-chain.crt", demo_pki / "rogue.key")
    with pytest.raises(
        CertificateFileError, match=r"is neither in that file nor a root in .*root\.crt"
    ):
        load_tls_state(settings)


def test_chain_file_without_the_intermediate_is_refused(demo_pki: Path, tmp_path: Path) -> None:
    leaf_only = tmp_path / "leaf.crt"
    leaf_only.write_bytes((demo_pki / "userservice.crt").read_bytes())
    settings = settings_for(demo_pki, leaf_only, demo_pki / "userservice.key")
    with pytest.raises(CertificateFileError, match="append the intermediate to the chain file"):
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
    with pytest.raises(CertificateFileError, match="not signed by a CA of this chain"):
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
    assert revoked == "resumed session for a revoked certificate"
    other = x509.load_pem_x509_certificate((pki / "eventservice.crt").read_bytes())
    assert state.refuse_peer(other, NOW, what="resumed session") is None
    later = other.not_valid_after_utc + datetime.timedelta(seconds=1)
    assert state.refuse_peer(other, later, what="kept-alive connection") == (
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
    assert "not signed by a CA of this chain (issuer 'CN=Evil Root,O=Example')" in str(e.value)


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
    seed_suite = {"MTLS_CIPHERS": "ECDHE-RSA-AES256-GCM-SHA384"}
    args = (demo_pki, demo_pki / "userservice-chain.crt", demo_pki / "userservice.key")
    with pytest.raises(CertificateFileError, match=r"offers no TLS 1\.2 suite for the EC key"):
        load_tls_state(settings_for(*args, **seed_suite))
    load_tls_state(settings_for(*args, **seed_suite, MTLS_MIN_VERSION="TLSv1.3"))
    load_tls_state(settings_for(*args, MTLS_CIPHERS="ECDHE-ECDSA-AES256-GCM-SHA384"))


def test_resumed_session_is_refused_once_the_crl_is_stale(demo_pki: Path) -> None:
    state = load_tls_state(userservice_settings(demo_pki, MTLS_CRLFILE=str(demo_pki / "crl.pem")))
    assert state.crl_next_update is not None
    peer = x509.load_pem_x509_certificate((demo_pki / "eventservice.crt").read_bytes())
    assert state.refuse_peer(peer, state.crl_next_update, what="resumed session") is None
    stale = state.crl_next_update + datetime.timedelta(seconds=1)
    assert state.refuse_peer(peer, stale, what="resumed session") == (
        "resumed session, but the CRL is past its nextUpdate (refresh it: `pki crl`)"
    )
