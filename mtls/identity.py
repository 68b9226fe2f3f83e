"""Client certificate -> the mod_ssl environ keys our apps and policies read.

Pure functions over `cryptography` objects: no sockets, no files, no clock.
Names and formats are Apache mod_ssl 2.4's (https://httpd.apache.org/docs/
current/mod/mod_ssl.html#envvars, ``ssl_engine_vars.c``), which prints
through OpenSSL, so a DN regex written for Apache works here unchanged.

DNs are printed by mtls.dn, exactly as OpenSSL prints them; a peer's names
are read from the certificate's DER (``mtls.der``), never through
``cert.subject``, which refuses names OpenSSL prints (a BIT STRING CN).
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mtls.der import certificate_names
from mtls.dn import entries, escape, format_dn, print_value
from mtls.x509rules import read_sans

#: Where the worker puts the PeerIdentity (or None) for Python code.
PEER_ENVIRON_KEY = "mtls.peer"

# mod_ssl's ssl_var_lookup_ssl_cert_dn_rec (the rows it extracts): SSL_CLIENT_S_DN_<tag>.
_ENV_TAGS = {
    "2.5.4.6": "C", "2.5.4.8": "ST", "2.5.4.7": "L", "2.5.4.10": "O", "2.5.4.11": "OU",
    "2.5.4.3": "CN", "2.5.4.12": "T", "2.5.4.43": "I", "2.5.4.42": "G", "2.5.4.4": "S",
    "2.5.4.13": "D", "0.9.2342.19200300.100.1.1": "UID", "1.2.840.113549.1.9.1": "Email",
}  # fmt: skip
# OBJ_nid2ln, as mod_ssl prints SSL_CLIENT_A_KEY / SSL_CLIENT_A_SIG.
_LONG_NAMES = {
    "1.2.840.10045.2.1": "id-ecPublicKey", "1.2.840.113549.1.1.1": "rsaEncryption",
    "1.2.840.113549.1.1.10": "rsassaPss", "1.3.101.112": "ED25519", "1.3.101.113": "ED448",
    "1.2.840.10045.4.3.2": "ecdsa-with-SHA256", "1.2.840.10045.4.3.3": "ecdsa-with-SHA384",
    "1.2.840.10045.4.3.4": "ecdsa-with-SHA512", "1.2.840.113549.1.1.5": "sha1WithRSAEncryption",
    "1.2.840.113549.1.1.11": "sha256WithRSAEncryption",
    "1.2.840.113549.1.1.12": "sha384WithRSAEncryption",
    "1.2.840.113549.1.1.13": "sha512WithRSAEncryption",
}  # fmt: skip
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAY = 86400


def format_serial(serial: int) -> str:
    """Upper-case hex in whole bytes, as mod_ssl's SSL_CLIENT_M_SERIAL (``0A1B2C``).

    That is OpenSSL's ``i2a_ASN1_INTEGER``: the magnitude's bytes, ``-`` for
    a negative (non-RFC 5280) serial, ``00`` for zero.
    """
    magnitude = abs(serial)
    text = magnitude.to_bytes(max(1, (magnitude.bit_length() + 7) // 8), "big").hex().upper()
    return "-" + text if serial < 0 else text


def format_time(moment: datetime.datetime) -> str:
    """OpenSSL's ASN1_TIME_print format, as mod_ssl's SSL_CLIENT_V_START/_END.

    The day is space-padded to two characters: ``Feb  6 03:04:05 2027 GMT``.
    English month names whatever the process locale; a naive datetime is
    taken as UTC (cryptography's deprecated ``not_valid_*`` are naive UTC).
    """
    utc = _utc(moment)
    return f"{_MONTHS[utc.month - 1]} {utc.day:2d} {utc:%H:%M:%S} {utc.year} GMT"


def remaining_days(not_after: datetime.datetime, now: datetime.datetime) -> int:
    """SSL_CLIENT_V_REMAIN as mod_ssl 2.4 computes it (``ssl_var_lookup_ssl_cert_remain``).

    Whole seconds, ``(notAfter - now) / 86400`` truncated, never below 0, and
    one day more than the plain difference: mod_ssl passes ``tm_mday + 1``
    to APR, so a certificate expiring in 30 days shows 31 and one that
    expires within the next day shows 1 (0 only once it has expired).
    """
    seconds = int((_utc(not_after) - _utc(now).replace(microsecond=0)).total_seconds())
    return max(0, (seconds + _DAY) // _DAY)


def peer_from_der(der: bytes) -> x509.Certificate:
    """Parse ``SSLSocket.getpeercert(binary_form=True)``, and everything we read from it.

    cryptography parses extensions lazily and is stricter than OpenSSL, so
    touch them here, and print both names from the DER: any failure
    surfaces once, as a ValueError, where the worker refuses the connection,
    not later inside a request (nor as a TypeError logged with a traceback).
    """
    try:
        cert = x509.load_der_x509_certificate(der)
        _ = (cert.extensions, cert.not_valid_before_utc, cert.not_valid_after_utc)
        for name in _names(cert):
            format_dn(name)
    except ValueError:
        raise
    except (TypeError, x509.UnsupportedGeneralNameType) as exc:
        raise ValueError(f"certificate cannot be read: {exc}") from exc
    return cert


@dataclass(frozen=True)
class PeerIdentity:
    """The verified client certificate, parsed once per connection for Python code.

    DNs and serial are the environ's strings; times are aware UTC datetimes;
    SAN values are the certificate's own, not escaped as the environ's are.
    """

    subject_dn: str
    issuer_dn: str
    serial: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    san_dns: tuple[str, ...]
    san_uri: tuple[str, ...]
    san_ip: tuple[str, ...]
    san_email: tuple[str, ...]
    cert: x509.Certificate = field(repr=False)

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> PeerIdentity:
        sans = _sans(cert)
        issuer, subject = _names(cert)
        return cls(
            subject_dn=format_dn(subject),
            issuer_dn=format_dn(issuer),
            serial=format_serial(cert.serial_number),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            san_dns=tuple(sans["DNS"]),
            san_uri=tuple(sans["URI"]),
            san_ip=tuple(sans["IPaddr"]),
            san_email=tuple(sans["Email"]),
            cert=cert,
        )


def build_tls_environ(
    *,
    protocol: str,
    cipher: str,
    sni: str | None,
    resumed: bool,
    peer: x509.Certificate | None,
    now: datetime.datetime,
) -> dict[str, str]:
    """The mod_ssl variables for one connection (all ``str``, PEP 3333).

    As mod_ssl's fixup hook does, a variable whose value is empty is left
    out (no SNI, an empty subject). SSL_CLIENT_SAN_IPaddr_n and _URI_n are
    our extension in mod_ssl's style; mod_ssl exports DNS and Email only.
    """
    certificate = certificate_environ(peer) if peer is not None else None
    return connection_environ(
        protocol=protocol, cipher=cipher, sni=sni, resumed=resumed,
        peer=peer, certificate=certificate, now=now,
    )  # fmt: skip


def connection_environ(
    *,
    protocol: str,
    cipher: str,
    sni: str | None,
    resumed: bool,
    peer: x509.Certificate | None,
    certificate: Mapping[str, str] | None,
    now: datetime.datetime,
) -> dict[str, str]:
    """build_tls_environ with ``certificate_environ(peer)`` computed already (mtls.identitycache).

    What depends on the connection or the clock is computed here, each time:
    protocol, cipher, SNI, resumption and SSL_CLIENT_V_REMAIN.
    """
    env = {
        "HTTPS": "on",
        "SSL_PROTOCOL": protocol,
        "SSL_CIPHER": cipher,
        "SSL_TLS_SNI": sni or "",
        "SSL_SESSION_RESUMED": "Resumed" if resumed else "Initial",
        "SSL_CLIENT_VERIFY": "SUCCESS" if peer is not None else "NONE",
    }
    env = {key: value for key, value in env.items() if value}
    if peer is not None:
        env.update(certificate if certificate is not None else certificate_environ(peer))
        env["SSL_CLIENT_V_REMAIN"] = str(remaining_days(peer.not_valid_after_utc, now))
    return env


def certificate_environ(cert: x509.Certificate) -> dict[str, str]:
    """The variables read from the certificate alone, the same on every connection that presents it.

    Empty values are left out already (build_tls_environ).
    """
    issuer, subject = _names(cert)
    env = {
        "SSL_CLIENT_M_VERSION": str(cert.version.value + 1),
        "SSL_CLIENT_M_SERIAL": format_serial(cert.serial_number),
        "SSL_CLIENT_S_DN": format_dn(subject),
        "SSL_CLIENT_I_DN": format_dn(issuer),
        "SSL_CLIENT_V_START": format_time(cert.not_valid_before_utc),
        "SSL_CLIENT_V_END": format_time(cert.not_valid_after_utc),
        "SSL_CLIENT_A_KEY": _LONG_NAMES.get(cert.public_key_algorithm_oid.dotted_string, "UNKNOWN"),
        "SSL_CLIENT_A_SIG": _LONG_NAMES.get(cert.signature_algorithm_oid.dotted_string, "UNKNOWN"),
        "SSL_CLIENT_CERT": cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
    }
    env.update(_dn_vars("SSL_CLIENT_S_DN_", subject))
    env.update(_dn_vars("SSL_CLIENT_I_DN_", issuer))
    for kind, values in _sans(cert).items():
        for index, value in enumerate(values):
            # mod_ssl escapes control characters in SAN values too (asn1_string_to_utf8).
            env[f"SSL_CLIENT_SAN_{kind}_{index}"] = escape(value, rfc2253=False)
    return {key: value for key, value in env.items() if value}


def _dn_vars(prefix: str, name: bytes) -> dict[str, str]:
    """mod_ssl's extract_dn: DER order, first ``<prefix>OU``, then ``OU_1``, ``OU_2``...

    Values are unescaped text (ESC_CTRL | UTF8_CONVERT only): ``Smith, John``.
    """
    env: dict[str, str] = {}
    seen: Counter[str] = Counter()
    for entry in entries(name):
        tag = _ENV_TAGS.get(entry.oid)
        if tag is not None:
            key = f"{prefix}{tag}_{seen[tag]}" if seen[tag] else prefix + tag
            env[key] = print_value(entry, rfc2253=False)
            seen[tag] += 1
    return env


def _sans(cert: x509.Certificate) -> dict[str, list[str]]:
    """subjectAltName values by mod_ssl kind, in certificate order (mtls.x509rules reads them)."""
    sans = read_sans(cert)
    return {
        "DNS": list(sans.dns),
        "Email": list(sans.email),
        "IPaddr": list(sans.ip),
        "URI": list(sans.uri),
    }


def _names(cert: x509.Certificate) -> tuple[bytes, bytes]:
    """(issuer, subject) DER, read without cryptography's Name (module docstring)."""
    return certificate_names(cert.tbs_certificate_bytes)


def _utc(moment: datetime.datetime) -> datetime.datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC)
