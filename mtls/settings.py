"""Server settings: the SPEC's ``MTLS_*`` env vars parsed once into a frozen object.

Every problem is collected and reported together, each naming its variable,
so a misconfigured deployment is fixed in one round trip, not five.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from mtls.errors import ConfigError

ClientAuth = Literal["required", "optional"]
ProxyMode = Literal["off", "v1", "v2", "auto"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")

_CLIENT_AUTH: dict[str, ClientAuth] = {"required": "required", "optional": "optional"}
_PROXY_MODES: dict[str, ProxyMode] = {"off": "off", "v1": "v1", "v2": "v2", "auto": "auto"}
_VERSIONS = {
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}

# Forward-secret AEAD suites only. TLS 1.3 suites are not affected by this
# list (OpenSSL configures them separately) and are all AEAD already.
DEFAULT_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


@dataclass(frozen=True)
class ServerSettings:
    """What the mTLS listener needs; defaults are the SPEC's.

    certfile: leaf + intermediates (never the root); keyfile: its key;
    ca_certs: the trust bundle, the private root only (never the system store).
    """

    certfile: Path
    keyfile: Path
    ca_certs: Path
    crlfile: Path | None = None
    client_auth: ClientAuth = "required"
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    ciphers: str = DEFAULT_CIPHERS
    proxy_protocol: ProxyMode = "off"
    proxy_allow_from: tuple[IPNetwork, ...] = ()
    handshake_timeout: float = 10.0
    reload_interval: float = 2.0
    # Hostile-peer bounds (SECURITY.md): a request head (and a body of up to
    # 64 KiB) must arrive whole within request_timeout of its first byte; once
    # a thread serves the request, each read or write waits io_timeout at most.
    request_timeout: float = 10.0
    io_timeout: float = 10.0
    # Connections still in their PROXY header or TLS handshake, per worker;
    # the oldest (silent ones first) is dropped to admit a new one.
    max_handshakes: int = 1000
    # A kept-alive connection is closed after its response once this old, so
    # no connection outlives the certificate checks of its handshake for long.
    max_connection_age: float = 600.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerSettings:
        env = os.environ if environ is None else environ
        problems: list[str] = []

        def path(name: str, *, required: bool, example: str) -> Path | None:
            value = env.get(name, "").strip()
            if not value:
                if required:
                    problems.append(f"{name} is not set: point it at {example}")
                return None
            return Path(value)

        certfile = path(
            "MTLS_CERTFILE", required=True, example="the server's chain (pki/out/NAME-chain.crt)"
        )
        keyfile = path("MTLS_KEYFILE", required=True, example="the server's key (pki/out/NAME.key)")
        ca_certs = path(
            "MTLS_CA_CERTS", required=True, example="the root bundle (pki/out/root.crt)"
        )
        crlfile = path("MTLS_CRLFILE", required=False, example="")

        client_auth = _choice(env, "MTLS_CLIENT_AUTH", _CLIENT_AUTH, "required", problems)
        proxy_protocol = _choice(env, "MTLS_PROXY_PROTOCOL", _PROXY_MODES, "off", problems)
        version_name = env.get("MTLS_MIN_VERSION", "TLSv1.2").strip()
        min_version = _VERSIONS.get(version_name)
        if min_version is None:
            problems.append(
                f"MTLS_MIN_VERSION={version_name!r} is not one of {', '.join(_VERSIONS)}"
            )
        ciphers = env.get("MTLS_CIPHERS", "").strip() or DEFAULT_CIPHERS
        if not _ciphers_usable(ciphers):
            problems.append(f"MTLS_CIPHERS={ciphers!r} selects no cipher OpenSSL knows")

        allow_raw = env.get("MTLS_PROXY_ALLOW_FROM", "")
        allow_from = _networks(allow_raw, problems)
        # Only when the variable is empty: a malformed entry was reported just above,
        # and "needs MTLS_PROXY_ALLOW_FROM" would send the reader to set what is set.
        if proxy_protocol not in (None, "off") and not allow_raw.replace(",", " ").strip():
            problems.append(
                f"MTLS_PROXY_PROTOCOL={proxy_protocol} needs MTLS_PROXY_ALLOW_FROM: "
                "the load balancer addresses (CIDRs) that may send a PROXY header"
            )
        handshake_timeout = parse_seconds(
            env, "MTLS_HANDSHAKE_TIMEOUT", 10.0, problems, minimum=0.1
        )
        reload_interval = parse_seconds(env, "MTLS_RELOAD_INTERVAL", 2.0, problems, minimum=0.0)
        request_timeout = parse_seconds(env, "MTLS_REQUEST_TIMEOUT", 10.0, problems, minimum=0.1)
        io_timeout = parse_seconds(env, "MTLS_IO_TIMEOUT", 10.0, problems, minimum=0.1)
        max_connection_age = parse_seconds(
            env, "MTLS_MAX_CONNECTION_AGE", 600.0, problems, minimum=1.0, maximum=86400.0
        )
        max_handshakes = _count(env, "MTLS_MAX_HANDSHAKES", 1000, problems, minimum=1)

        if problems:
            raise ConfigError("invalid mTLS server settings:\n  - " + "\n  - ".join(problems))
        assert certfile
        assert keyfile
        assert ca_certs
        assert client_auth
        assert proxy_protocol
        assert min_version is not None
        return cls(
            certfile=certfile,
            keyfile=keyfile,
            ca_certs=ca_certs,
            crlfile=crlfile,
            client_auth=client_auth,
            min_version=min_version,
            ciphers=ciphers,
            proxy_protocol=proxy_protocol,
            proxy_allow_from=allow_from,
            handshake_timeout=handshake_timeout,
            reload_interval=reload_interval,
            request_timeout=request_timeout,
            io_timeout=io_timeout,
            max_handshakes=max_handshakes,
            max_connection_age=max_connection_age,
        )

    @property
    def files(self) -> tuple[Path, ...]:
        """The files whose change on disk triggers a reload."""
        listed = (self.certfile, self.keyfile, self.ca_certs, self.crlfile)
        return tuple(p for p in listed if p is not None)

    def proxy_allowed(self, address: str) -> bool:
        """Whether a peer at ``address`` may (and so must) send a PROXY header."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.proxy_allow_from)


def _choice(
    env: Mapping[str, str], name: str, table: Mapping[str, T], default: str, problems: list[str]
) -> T | None:
    value = env.get(name, default).strip() or default
    if value not in table:
        problems.append(f"{name}={value!r} is not one of {', '.join(table)}")
        return None
    return table[value]


def parse_seconds(
    env: Mapping[str, str],
    name: str,
    default: float,
    problems: list[str],
    *,
    minimum: float,
    maximum: float = 3600.0,
) -> float:
    """A duration setting; a bad one is added to ``problems`` (reported with the rest)."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        problems.append(f"{name}={raw!r} is not a number of seconds")
        return default
    if not minimum <= value <= maximum:  # also refuses NaN and inf
        problems.append(f"{name}={raw!r} must be between {minimum:g} and {maximum:g} seconds")
        return default
    return value


def _count(
    env: Mapping[str, str],
    name: str,
    default: int,
    problems: list[str],
    *,
    minimum: int,
    maximum: int = 1_000_000,
) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        problems.append(f"{name}={raw!r} is not a whole number")
        return default
    if not minimum <= value <= maximum:
        problems.append(f"{name}={raw!r} must be between {minimum} and {maximum}")
        return default
    return value


def _networks(raw: str, problems: list[str]) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    for item in raw.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            problems.append(f"MTLS_PROXY_ALLOW_FROM has {item!r}, which is not an IP or CIDR")
    return tuple(networks)


def _ciphers_usable(ciphers: str) -> bool:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.set_ciphers(ciphers)
    except ssl.SSLError:
        return False
    return True
