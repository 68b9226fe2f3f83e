"""Client certificates with hostile subject names, from the trusted CA, against a real server.

Any holder of a certificate from a trusted CA controls its subject: these
run the real User Service under gunicorn with the project's config and check
what reaches the app (mod_ssl's DN string, unchanged) and the log (one
printable line per record, no traceback).
"""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.name import _ASN1Type  # the only way to pick a BIT STRING value
from cryptography.x509.oid import NameOID

from mtls.dn import format_dn
from mtls.logs import log_safe
from pki import authority, store
from tests.servers import Server, client_context, running, server_env
from tests.tools import require_tool

EVIL_CN = "mallory\u2028[2026-12-02 00:00:00 +0000] [1] [INFO] forged\u0085x\x9b31m"
RAW_SEPARATORS = (b"\xe2\x80\xa8", b"\xe2\x80\xa9", b"\xc2\x85", b"\xc2\x9b")

Client = Callable[[x509.Name], tuple[ssl.SSLContext, x509.Certificate]]


@pytest.fixture
def client_for(demo_pki: Path, tmp_path: Path) -> Client:
    """client_for(name) -> a TLS context presenting a leaf for ``name`` from the demo's CA."""
    issuer = store.load_issued(demo_pki / "global.crt", demo_pki / "global.key", fix="-")

    def make(name: x509.Name) -> tuple[ssl.SSLContext, x509.Certificate]:
        leaf = authority.build_leaf(
            issuer, name=name, profile="client", uris=("spiffe://example.org/mallory",)
        )
        (tmp_path / "odd-chain.crt").write_bytes(store.encode_certs(leaf.chain_file_certs))
        (tmp_path / "odd.key").write_bytes(store.encode_key(leaf.key))
        ctx = ssl.create_default_context(cafile=str(demo_pki / "root.crt"))
        ctx.load_cert_chain(tmp_path / "odd-chain.crt", tmp_path / "odd.key")
        return ctx, leaf.cert

    return make


@pytest.fixture
def userservice(demo_pki: Path, tmp_path: Path) -> Iterator[Server]:
    env = server_env(
        demo_pki, "userservice", USERSERVICE_DATABASE_URL=f"sqlite:///{tmp_path / 'u.db'}"
    )
    ready = client_context(demo_pki, "homepage")
    with running("wsgi:userservice", env, tmp_path / "user.log", ready) as server:
        yield server


def request(server: Server, ctx: ssl.SSLContext, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("localhost", server.port, context=ctx, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def openssl_subject(cert: x509.Certificate) -> str:
    """The subject as mod_ssl prints it: ``-nameopt RFC2253,-esc_msb`` (see test_identity)."""
    out = subprocess.run(
        [require_tool("openssl"), "x509", "-noout", "-subject", "-nameopt", "RFC2253,-esc_msb"],
        input=cert.public_bytes(serialization.Encoding.PEM),
        capture_output=True,
        check=True,
    )
    return out.stdout.decode("utf-8").rstrip("\n").removeprefix("subject=")


def test_a_dn_full_of_line_breakers_reaches_the_logs_escaped_and_the_app_raw(
    userservice: Server, client_for: Client
) -> None:
    ctx, cert = client_for(authority.make_name(EVIL_CN, ou="Services"))
    status, body = request(userservice, ctx, "/whoami")
    denied, _ = request(userservice, ctx, "/users/%E2%80%A8%C2%85x")  # a path that decodes raw
    userservice.wait_for_log('"GET /users/%E2%80%A8%C2%85x HTTP/1.1" 403')
    userservice.wait_for_log("does not match USERSERVICE_ALLOWED_DN")

    assert (status, denied) == (200, 403)
    dn = format_dn(cert.subject)
    assert json.loads(body)["subject_dn"] == dn  # the app sees mod_ssl's string, raw
    assert "\u2028" in dn
    raw_log = userservice.log_path.read_bytes()
    for separator in RAW_SEPARATORS:
        assert separator not in raw_log
    text = raw_log.decode("utf-8")
    lines = text.splitlines()
    assert lines == text.split("\n")[:-1]  # no line ends but "\n"
    whoami = [line for line in lines if '"GET /whoami HTTP/1.1"' in line]
    assert len(whoami) == 1
    assert f'dn="{log_safe(dn)}"' in whoami[0]
    assert "mallory\\u2028[2026-12-02" in whoami[0]
    denial = [line for line in lines if "does not match USERSERVICE_ALLOWED_DN" in line]
    assert len(denial) == 1
    assert "denied GET /users/\\u2028\\x85x (blueprint 'users'" in denial[0]
    assert not any(line.startswith("[2026-12-02 00:00:00 +0000]") for line in lines)


def bit_string_cn(value: bytes) -> x509.Name:
    """O=Example, CN=<BIT STRING>: cryptography only builds BIT STRINGs for x500UniqueIdentifier,
    so the attribute is made as one and then given the CN's type (its encoder takes it)."""
    attribute = x509.NameAttribute(NameOID.X500_UNIQUE_IDENTIFIER, value, _type=_ASN1Type.BitString)
    object.__setattr__(attribute, "_oid", NameOID.COMMON_NAME)
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"), attribute])


def test_a_bit_string_cn_is_printed_as_openssl_prints_it_without_an_error(
    userservice: Server, client_for: Client
) -> None:
    ctx, cert = client_for(bit_string_cn(b"\x00\xffmallory"))
    with pytest.raises(TypeError, match="BitString"):
        _ = cert.subject  # what used to escape from the worker as an ERROR with a traceback

    status, body = request(userservice, ctx, "/whoami")
    denied, refusal = request(userservice, ctx, "/users/1")

    expected = openssl_subject(cert)
    assert expected == "CN=#030900FF6D616C6C6F7279,O=Example"
    assert (status, denied) == (200, 403)
    assert json.loads(body)["subject_dn"] == expected
    assert json.loads(refusal) == {"message": "Certificate subject is not recognized!"}
    log = userservice.wait_for_log("does not match USERSERVICE_ALLOWED_DN")
    assert "[ERROR]" not in log
    assert "Traceback" not in log
