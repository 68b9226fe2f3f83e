"""mtls.x509rules: the shared X.509 rules, and the two verdicts on a foreign CA.

A chain OpenSSL refuses (a CA:FALSE "intermediate") stops the server at
start-up; a chain only the strict verifier refuses (an Ed25519
intermediate) starts with a warning, and `pki verify` refuses both. Each
verdict is checked against what OpenSSL really does in a handshake (in
memory BIOs, with the client settings curl and requests use).
"""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from mtls import x509rules
from mtls.errors import CertificateFileError
from mtls.serverstate import load_tls_state
from mtls.settings import ServerSettings
from pki import authority, cli, store
from tests.foreign_cas import foreign_intermediate, server_leaf_under, write_server_files

NOW = datetime.datetime.now(datetime.UTC)


def demo_root(pki: Path) -> authority.Issued:
    return store.load_issued(pki / "root.crt", pki / "root.key", fix="")


def foreign_server(pki: Path, directory: Path, **kind: bool) -> tuple[Path, Path]:
    return write_server_files(
        directory, server_leaf_under(foreign_intermediate(demo_root(pki), **kind))
    )


def settings(pki: Path, chain: Path, key: Path) -> ServerSettings:
    return ServerSettings.from_env(
        {
            "MTLS_CERTFILE": str(chain),
            "MTLS_KEYFILE": str(key),
            "MTLS_CA_CERTS": str(pki / "root.crt"),
        }
    )


def openssl_client_refusal(chain: Path, key: Path, root: Path) -> str | None:
    """OpenSSL's verify message when a client trusting ``root`` meets this server, else None."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(chain, key)
    client_ctx = ssl.create_default_context(cafile=str(root))
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(to_client, to_server, server_hostname="localhost")
    server = server_ctx.wrap_bio(to_server, to_client, server_side=True)
    for _flight in range(10):  # a TLS 1.3 handshake takes two flights; bounded all the same
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                continue
            except ssl.SSLCertVerificationError as exc:
                return exc.verify_message
        if client.version() is not None and server.version() is not None:
            return None
    raise AssertionError("the in-memory handshake did not finish in 10 flights")


def test_ca_false_intermediate_is_refused_at_start_up_naming_the_file_and_the_certificate(
    demo_pki: Path, tmp_path: Path
) -> None:
    chain, key = foreign_server(demo_pki, tmp_path, ca=False)
    assert openssl_client_refusal(chain, key, demo_pki / "root.crt") == "invalid CA certificate"
    with pytest.raises(CertificateFileError) as caught:
        load_tls_state(settings(demo_pki, chain, key))
    assert (
        f"'CN=Foreign Intermediate,O=Example' in {chain} is not a CA (CA:FALSE), yet it "
        "issued 'CN=foreign.internal,OU=Services,O=Example': every client refuses this chain "
        "(OpenSSL: invalid CA certificate, curl exit 60)"
    ) in str(caught.value)
    assert caught.value.files == (chain,)


def test_ed25519_intermediate_starts_with_a_warning_naming_the_verifiers_reason(
    demo_pki: Path, tmp_path: Path
) -> None:
    chain, key = foreign_server(demo_pki, tmp_path, ca=True, ed25519_key=True)
    assert openssl_client_refusal(chain, key, demo_pki / "root.crt") is None
    state = load_tls_state(settings(demo_pki, chain, key))
    (warning,) = state.warnings
    assert warning.startswith(
        f"{chain} (CN=foreign.internal,OU=Services,O=Example): untrusted chain: the strict "
        "RFC 5280 verifier refuses it (validation failed: candidates exhausted: Forbidden "
        "public key algorithm"
    )
    assert "OpenSSL clients accept it, stricter ones (`pki verify`, Go, rustls) may not" in warning


def test_a_pki_made_chain_starts_without_warnings(demo_pki: Path) -> None:
    chain, key = demo_pki / "userservice-chain.crt", demo_pki / "userservice.key"
    assert openssl_client_refusal(chain, key, demo_pki / "root.crt") is None
    assert load_tls_state(settings(demo_pki, chain, key)).warnings == ()


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ({"ca": False}, "'CN=Foreign Intermediate,O=Example' in the chain is not a CA (CA:FALSE)"),
        ({"ca": True, "ed25519_key": True}, "the strict RFC 5280 verifier refuses it"),
    ],
)
def test_pki_verify_refuses_a_foreign_chain_with_the_strict_verdict(
    demo_pki: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kind: dict[str, bool],
    reason: str,
) -> None:
    chain, _ = foreign_server(demo_pki, tmp_path, **kind)
    argv = ["verify", str(chain), "--ca", str(demo_pki / "root.crt"), "--purpose", "server"]
    assert cli.main(argv, environ={}) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"REFUSED: {chain}: ")
    assert reason in out


def test_extension_is_the_value_or_none(demo_pki: Path) -> None:
    leaf = store.load_cert(demo_pki / "userservice.crt")
    constraints = x509rules.extension(leaf, x509.BasicConstraints)
    assert constraints is not None
    assert constraints.ca is False
    assert x509rules.extension(leaf, x509.NameConstraints) is None


def test_sans_are_read_by_kind_in_certificate_order(demo_pki: Path) -> None:
    global_ca = store.load_issued(demo_pki / "global.crt", demo_pki / "global.key", fix="")
    leaf = authority.build_leaf(
        global_ca,
        name=authority.make_name("svc"),
        profile="server",
        dns=["b.internal", "a.internal"],
        ips=["::1", "127.0.0.1"],
        uris=["spiffe://example/svc"],
        emails=["ops@example.com"],
        days=5,
    )
    assert x509rules.read_sans(leaf.cert) == x509rules.Sans(
        dns=("b.internal", "a.internal"),
        ip=("::1", "127.0.0.1"),
        uri=("spiffe://example/svc",),
        email=("ops@example.com",),
    )
    assert x509rules.read_sans(demo_root(demo_pki).cert) == x509rules.Sans()


def test_key_matches_its_certificate_only(demo_pki: Path) -> None:
    leaf = store.load_cert(demo_pki / "userservice.crt")
    assert x509rules.key_matches(store.load_key(demo_pki / "userservice.key"), leaf)
    assert not x509rules.key_matches(store.load_key(demo_pki / "homepage.key"), leaf)


def test_ca_and_root_are_told_apart(demo_pki: Path) -> None:
    root, global_ca, leaf = (
        store.load_cert(demo_pki / n) for n in ("root.crt", "global.crt", "homepage.crt")
    )
    assert [x509rules.is_ca(c) for c in (root, global_ca, leaf)] == [True, True, False]
    assert [x509rules.is_root(c) for c in (root, global_ca, leaf)] == [True, False, False]
    assert x509rules.issued_by(global_ca, root)
    assert not x509rules.issued_by(leaf, root)


def test_crl_trust_needs_a_ca_signature_and_freshness(demo_pki: Path) -> None:
    global_ca = store.load_issued(demo_pki / "global.crt", demo_pki / "global.key", fix="")
    leaf = store.load_issued(demo_pki / "homepage.crt", demo_pki / "homepage.key", fix="")
    crl = authority.build_crl(global_ca, [], now=NOW)
    assert x509rules.crl_problems(crl, [global_ca.cert], NOW) == []
    by_leaf = authority.build_crl(leaf, [], now=NOW)
    (problem,) = x509rules.crl_problems(by_leaf, [leaf.cert, global_ca.cert], NOW)
    assert problem.startswith(
        "the CRL from 'CN=homepage.internal,OU=Services,O=Example' is not signed by a CA of "
        "this chain"
    )
    assert crl.next_update_utc is not None
    later = crl.next_update_utc + datetime.timedelta(seconds=1)
    (stale,) = x509rules.crl_problems(crl, [global_ca.cert], later)
    assert stale.startswith("the CRL is past its nextUpdate (")
