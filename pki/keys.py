"""Key types: which ones pki makes, which it signs for, and which a CA may have.

Pure. EC P-256 is the default (fastest handshakes, accepted everywhere).
RSA is there for peers that need it, Ed25519 for leaves only: measured on
this project's stack (OpenSSL 3.0, Python 3.11's ssl, curl 7.88,
cryptography 50), an Ed25519 leaf under an EC CA passes ``openssl verify
-x509_strict``, Python's VERIFY_X509_STRICT handshakes (TLS 1.2 and 1.3),
curl and ``openssl s_client`` against our gunicorn worker, and
cryptography's verifier; an Ed25519 *CA* passes OpenSSL but cryptography's
verifier (which `pki verify` and the servers' start-up checks use) refuses
it with "Forbidden public key algorithm". See tests/test_pki_interop.py.
"""

from __future__ import annotations

from typing import Literal

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from pki.errors import KeyTypeError

KeyType = Literal["ec", "rsa", "ed25519"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
#: What a CA may sign with. Not Ed25519: cryptography's verifier, which `pki verify`
#: and our servers' start-up checks use, refuses a chain whose CA has an Ed25519
#: key ("Forbidden public key algorithm"), though OpenSSL accepts it. Ed25519
#: leaves under an EC or RSA CA pass every consumer (tests/test_pki_interop.py).
CaKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
ED25519_CA_REFUSED = (
    "an Ed25519 CA is refused: cryptography's verifier (used by `pki verify` and the "
    "servers' start-up checks) forbids Ed25519 keys on CA certificates; use --key-type "
    "ec or rsa for the CA (Ed25519 leaves under it work with curl, openssl and Python's ssl)"
)
#: Leaf public keys we sign, from `pki issue` or a CSR: what strict verifiers accept.
EC_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
RSA_BITS = (2048, 3072, 4096)


def generate_key(key_type: KeyType = "ec", rsa_bits: int = 2048) -> PrivateKey:
    """P-256 by default: the fastest handshakes, and accepted everywhere we care about."""
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "rsa" and rsa_bits in RSA_BITS:
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    raise KeyTypeError(f"key type {key_type!r} with {rsa_bits} bits is not supported")


def generate_ca_key(key_type: KeyType = "ec", rsa_bits: int = 2048) -> CaKey:
    key = generate_key(key_type, rsa_bits)
    if not isinstance(key, CaKey):
        raise KeyTypeError(ED25519_CA_REFUSED)
    return key


def check_leaf_key(public: object, *, source: str) -> PublicKey:
    """Refuse a key strict peers would refuse (small RSA, odd curves, DSA) before signing it."""
    if isinstance(public, ed25519.Ed25519PublicKey):
        return public
    if isinstance(public, ec.EllipticCurvePublicKey):
        if isinstance(public.curve, EC_CURVES):
            return public
        what = f"an EC key on {public.curve.name}"
    elif isinstance(public, rsa.RSAPublicKey):
        if 2048 <= public.key_size <= 8192:
            return public
        what = f"a {public.key_size}-bit RSA key"
    else:
        what = f"a {type(public).__name__.removeprefix('_')}"
    raise KeyTypeError(
        f"{source} holds {what}; pki signs EC (P-256, P-384, P-521), RSA (2048-8192 bits) "
        "and Ed25519 keys: make a new key of one of those"
    )
