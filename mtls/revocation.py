"""The CRL file (MTLS_CRLFILE) as untrusted input: read it strictly, never let it go backwards.

Pure, over bytes. A CRL is public data, refreshed by a scheduled job and
often fetched over plain http, so whoever can write or intercept it must not
gain trust from it. Two rules live here:

- the file holds X509 CRL blocks and nothing else. The scanner is at least as
  lenient as OpenSSL's PEM reader (``PEM_read_bio``: a BEGIN/END line may end
  in spaces, tabs or CR; any label), so nothing OpenSSL would find can hide
  from it; every other block, stray line or undecodable CRL is a problem
  naming the file and the line;
- a reload never accepts a CRL older than the one in use from the same
  issuer (RFC 5280 5.2.3: the CRL number only grows; without numbers, the
  thisUpdate of 5.1.2.4): an older CRL would re-enable certificates revoked
  since.

Deliberately NOT done here: who signed a CRL and whether it is fresh
(mtls.x509rules.crl_problems, applied by mtls.validation to the CA
certificates of the chain and the bundle) and delta CRLs
(we never load any; OpenSSL ignores them without X509_V_FLAG_USE_DELTAS).
"""

from __future__ import annotations

import base64
import binascii
import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from mtls.dn import format_dn
from mtls.x509rules import crl_number

_LABEL = b"X509 CRL"
# OpenSSL's sanitize_line() strips every byte <= ' ' at the end of a header line.
_TRAILING = bytes(range(0x21))
_FIX = "write it with `pki crl --dir DIR`"


@dataclass(frozen=True)
class CrlInfo:
    """What a reload compares: the issuer, and how recent its CRL is."""

    issuer: x509.Name
    issuer_dn: str
    number: int | None
    last_update: datetime.datetime

    def describe(self) -> str:
        when = f"thisUpdate {self.last_update:%Y-%m-%d %H:%M:%S} UTC"
        return when if self.number is None else f"CRL number {self.number}, {when}"


def crl_info(crl: x509.CertificateRevocationList) -> CrlInfo:
    return CrlInfo(crl.issuer, format_dn(crl.issuer), crl_number(crl), crl.last_update_utc)


def parse_crl_file(
    path: Path, data: bytes, problems: list[str]
) -> list[x509.CertificateRevocationList]:
    """Every CRL in ``data``; anything else in it is appended to ``problems``."""
    if b"-----BEGIN" not in data:
        problems.append(f"{path}: not a PEM CRL; {_FIX}")
        return []
    crls = []
    lines = data.split(b"\n")  # OpenSSL's BIO_gets() ends a line at LF only
    index = 0
    stray: int | None = None
    while index < len(lines):
        header = lines[index].rstrip(_TRAILING)
        start = index + 1
        index += 1
        if not header:
            continue
        if not (header.startswith(b"-----BEGIN ") and header.endswith(b"-----")):
            stray = stray or start
            continue
        label = header[len(b"-----BEGIN ") : -len(b"-----")]
        end = b"-----END " + label + b"-----"
        body = []
        while index < len(lines) and lines[index].rstrip(_TRAILING) != end:
            body.append(lines[index].strip(_TRAILING))
            index += 1
        if index == len(lines):
            problems.append(f"{path}, line {start}: a {_show(label)} block with no END line")
            break
        index += 1
        if label != _LABEL:
            problems.append(
                f"{path}, line {start}: holds a {_show(label)} block; ssl would trust a "
                "certificate there as a CA, so MTLS_CRLFILE may hold X509 CRL blocks only; "
                f"{_FIX}"
            )
            continue
        crl = _decode(path, start, b"".join(body), problems)
        if crl is not None:
            crls.append(crl)
    if stray is not None:
        problems.append(
            f"{path}, line {stray}: text outside the PEM blocks; MTLS_CRLFILE may hold "
            f"X509 CRL blocks only; {_FIX}"
        )
    return crls


def _decode(
    path: Path, line: int, body: bytes, problems: list[str]
) -> x509.CertificateRevocationList | None:
    """Parse one CRL and read every field we or OpenSSL will use, so none fails later."""
    try:
        crl = x509.load_der_x509_crl(base64.b64decode(body, validate=True))
        crl_info(crl)
        _ = crl.next_update_utc, crl.extensions, crl.signature_algorithm_oid
        for entry in crl:
            _ = entry.serial_number, entry.revocation_date_utc, entry.extensions
    except (binascii.Error, ValueError, TypeError, UnsupportedAlgorithm) as e:
        problems.append(f"{path}, line {line}: a CRL that cannot be read ({_show(str(e))}); {_FIX}")
        return None
    return crl


def refuse_older_crls(
    path: Path, loaded: Sequence[CrlInfo], candidate: Sequence[CrlInfo]
) -> list[str]:
    """Why ``candidate`` (the file now) must not replace ``loaded`` (in use): one line per issuer.

    Per issuer present in both, the newest CRL of each set is compared: by
    CRL number when both have one, else by thisUpdate. Equal is fine (the
    same CRL re-read). An issuer only in one set is not compared: a CRL that
    disappears makes OpenSSL refuse that issuer's clients (fail closed).
    """
    in_use = _newest_by_issuer(loaded)
    problems = []
    for issuer, new in _newest_by_issuer(candidate).items():
        old = in_use.get(issuer)
        if old is not None and _older(new, old):
            problems.append(
                f"{path}: the CRL from '{new.issuer_dn}' ({new.describe()}) is older than the "
                f"one in use ({old.describe()}); an older CRL would re-enable certificates "
                "revoked since, so it is refused; run `pki crl --dir DIR` to write a current one"
            )
    return problems


def _older(new: CrlInfo, old: CrlInfo) -> bool:
    if new.number is not None and old.number is not None:
        return new.number < old.number
    return new.last_update < old.last_update


def _newest_by_issuer(infos: Sequence[CrlInfo]) -> dict[x509.Name, CrlInfo]:
    newest: dict[x509.Name, CrlInfo] = {}
    for info in infos:
        best = newest.get(info.issuer)
        if best is None or _older(best, info):
            newest[info.issuer] = info
    return newest


def _show(text: bytes | str, limit: int = 60) -> str:
    """Attacker-chosen text, made safe for one log line."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")
