"""Checks on what goes into a certificate's names, before anything is signed.

Pure functions. They accept what strict verifiers accept (RFC 5280 / the
CA/Browser Forum's preferred name syntax) and reject the rest with a message
that says what to type instead, so a typo becomes an error here rather than
a certificate that fails at handshake time.

Deliberately NOT checked: whether a DNS name resolves, whether a URI's scheme
is meaningful to anyone, or whether an e-mail address has a mailbox.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import SplitResult, urlsplit

from cryptography import x509

from pki.errors import InvalidNameError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_FILE_STEM = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}")


def is_dns_name(value: str) -> bool:
    """True for a plain host name (no wildcard): used to default a SAN from the CN."""
    try:
        check_dns_name(value, wildcard=False)
    except InvalidNameError:
        return False
    return True


def is_ip_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def check_dns_name(value: str, *, wildcard: bool = True) -> str:
    """Return the name in lower case, or raise saying which part is wrong.

    A wildcard is allowed only as the whole left-most label of a name with at
    least two more labels (``*.example.com``), the only form verifiers honour.
    """
    name = value.lower()
    if not name.isascii():
        raise InvalidNameError(
            f"DNS name {value!r} is not ASCII; give its IDNA form (xn--...) instead"
        )
    if is_ip_address(name):
        raise InvalidNameError(f"DNS name {value!r} is an IP address; pass it with --ip instead")
    if not name or len(name) > 253 or name.endswith("."):
        raise InvalidNameError(
            f"DNS name {value!r} must be 1-253 characters without a trailing dot"
        )
    labels = name.split(".")
    if wildcard and labels[0] == "*" and len(labels) >= 3:
        labels = labels[1:]
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise InvalidNameError(
                f"DNS name {value!r} has an invalid label {label!r}: labels are 1-63 of "
                "a-z, 0-9 and '-', not starting or ending with '-'"
            )
    return name


def parse_ip(value: str) -> IPAddress:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise InvalidNameError(
            f"IP address {value!r} is not an IPv4 or IPv6 address (e.g. 127.0.0.1 or ::1)"
        ) from None


def check_uri(value: str) -> str:
    """A URI SAN needs a scheme and something after it (``spiffe://example/svc``)."""
    parts = _split(value, what="URI")
    if not value.isascii() or any(c.isspace() for c in value):
        raise InvalidNameError(f"URI {value!r} must be ASCII without spaces")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", parts.scheme) or not (
        parts.netloc or parts.path
    ):
        raise InvalidNameError(f"URI {value!r} needs a scheme, e.g. spiffe://example.org/service")
    return value


def check_url(value: str, *, what: str) -> str:
    """An http(s) URL with a host: what a CRL Distribution Point must hold to be fetched."""
    parts = _split(value, what=what)
    if parts.scheme not in ("http", "https") or not parts.hostname or not value.isascii():
        raise InvalidNameError(f"{what} {value!r} must be an http:// or https:// URL with a host")
    return value


def _split(value: str, *, what: str) -> SplitResult:
    """`urlsplit`, with its ValueError (bad ``[IPv6]`` host, port not 0-65535) as our error."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (parsed lazily: this is where a bad port raises)
    except ValueError as exc:
        raise InvalidNameError(
            f"{what} {value!r} is malformed ({exc}); check the [IPv6] brackets and the port"
        ) from None
    return parts


def check_email(value: str) -> str:
    local, at, domain = value.rpartition("@")
    if not at or not _EMAIL_LOCAL.fullmatch(local) or not is_dns_name(domain):
        raise InvalidNameError(
            f"e-mail address {value!r} must look like name@example.org (ASCII only)"
        )
    return value


def check_file_stem(value: str) -> str:
    """NAME becomes NAME.key, NAME.crt...: keep it to characters that are safe in any path."""
    if not _FILE_STEM.fullmatch(value):
        raise InvalidNameError(
            f"name {value!r} is not a safe file name: use 1-64 of a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return value


def subject_alt_names(
    *,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    uris: Sequence[str] = (),
    emails: Sequence[str] = (),
) -> list[x509.GeneralName]:
    """Check every entry, report every bad one at once, keep the order, drop exact duplicates."""
    checks: list[tuple[Callable[[str], object], Sequence[str], Callable[[Any], x509.GeneralName]]]
    checks = [
        (check_dns_name, dns, x509.DNSName),
        (parse_ip, ips, x509.IPAddress),
        (check_uri, uris, x509.UniformResourceIdentifier),
        (check_email, emails, x509.RFC822Name),
    ]
    names: list[x509.GeneralName] = []
    problems: list[str] = []
    for check, values, kind in checks:
        for value in values:
            try:
                names.append(kind(check(value)))
            except InvalidNameError as exc:
                problems.append(str(exc))
    if problems:
        raise InvalidNameError("; ".join(problems))
    return list(dict.fromkeys(names))
