"""Server settings: the ``MTLS_*`` env vars (README, "Server settings") parsed into a frozen object.

Each setting is declared once, with its default, parser and meaning
(mtls.envconfig); every problem is reported together, each naming its variable.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mtls.envconfig import (
    Invalid,
    choice,
    duration,
    env,
    path,
    read_env,
    seconds,
    whole_number,
)

ClientAuth = Literal["required", "optional"]
ProxyMode = Literal["off", "v1", "v2", "auto"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_CLIENT_AUTH: dict[str, ClientAuth] = {"required": "required", "optional": "optional"}
_PROXY_MODES: dict[str, ProxyMode] = {"off": "off", "v1": "v1", "v2": "v2", "auto": "auto"}
_VERSIONS = {
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}

# Forward-secret AEAD suites only. TLS 1.3 suites are not affected by this
# list (OpenSSL configures them separately) and are all AEAD already.
DEFAULT_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
# /healthz says warn under this much certificate left (SPEC: under 7 days).
CERT_WARN_DEFAULT = 7 * 86400.0


def _ciphers(var: str, raw: str) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.set_ciphers(raw)
    except ssl.SSLError:
        raise Invalid(f"{var}={raw!r} selects no cipher OpenSSL knows") from None
    return raw


def _networks(var: str, raw: str) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    problems: list[str] = []
    for item in raw.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            problems.append(f"{var} has {item!r}, which is not an IP or CIDR")
    if problems:
        raise Invalid(*problems)
    return tuple(networks)


def _host_port(var: str, raw: str) -> tuple[str, int]:
    host, sep, port = raw.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise Invalid(f"{var}={raw!r} is not HOST:PORT, e.g. 127.0.0.1:9109")
    return host, int(port)


@dataclass(frozen=True)
class ServerSettings:
    """What the mTLS listener needs: each setting declared once (mtls.envconfig).

    certfile: leaf + intermediates (never the root); keyfile: its key;
    ca_certs: the trust bundle, the private root only (never the system store).
    """

    certfile: Path = env(
        "MTLS_CERTFILE",
        path,
        doc="the server's chain (leaf + intermediates)",
        example="the server's chain (pki/out/NAME-chain.crt)",
    )
    keyfile: Path = env(
        "MTLS_KEYFILE",
        path,
        doc="its private key, unencrypted, mode 0600",
        example="the server's key (pki/out/NAME.key)",
    )
    ca_certs: Path = env(
        "MTLS_CA_CERTS",
        path,
        doc="the trust bundle: the private root only",
        example="the root bundle (pki/out/root.crt)",
    )
    crlfile: Path | None = env("MTLS_CRLFILE", path, None, "CRL checked for every client leaf")
    client_auth: ClientAuth = env(
        "MTLS_CLIENT_AUTH", choice(_CLIENT_AUTH), "required", "optional for browser listeners"
    )
    min_version: ssl.TLSVersion = env(
        "MTLS_MIN_VERSION", choice(_VERSIONS), ssl.TLSVersion.TLSv1_2, "lowest TLS version"
    )
    ciphers: str = env("MTLS_CIPHERS", _ciphers, DEFAULT_CIPHERS, "TLS 1.2 cipher list")
    proxy_protocol: ProxyMode = env(
        "MTLS_PROXY_PROTOCOL", choice(_PROXY_MODES), "off", "PROXY header before the ClientHello"
    )
    proxy_allow_from: tuple[IPNetwork, ...] = env(
        "MTLS_PROXY_ALLOW_FROM", _networks, (), "CIDRs that must send a PROXY header"
    )
    handshake_timeout: float = env(
        "MTLS_HANDSHAKE_TIMEOUT", seconds(0.1), 10.0, "seconds for PROXY header + handshake"
    )
    reload_interval: float = env(
        "MTLS_RELOAD_INTERVAL",
        seconds(0.0),
        2.0,
        "seconds between file checks (a change is swapped in once it stood still for one); "
        "0 = SIGHUP only",
    )
    # Hostile-peer bounds (SECURITY.md).
    request_timeout: float = env(
        "MTLS_REQUEST_TIMEOUT",
        seconds(0.1),
        10.0,
        "seconds for a request head (and a body up to 64 KiB) once its first byte is in",
    )
    io_timeout: float = env(
        "MTLS_IO_TIMEOUT", seconds(0.1), 10.0, "seconds any one read or write in a thread may wait"
    )
    body_timeout: float = env(
        "MTLS_BODY_TIMEOUT",
        seconds(0.1, 86400.0),
        60.0,
        "seconds for a body read by a thread (over 64 KiB, or chunked) to arrive whole",
    )
    max_handshakes: int = env(
        "MTLS_MAX_HANDSHAKES",
        whole_number(1),
        1000,
        "connections per worker in PROXY/handshake; the oldest is dropped at the limit",
    )
    max_connection_age: float = env(
        "MTLS_MAX_CONNECTION_AGE",
        seconds(1.0, 86400.0),
        600.0,
        "seconds; the first response after this says Connection: close",
    )

    cert_warn: float = env(
        "MTLS_CERT_WARN",
        duration(60.0, 3650 * 86400.0),
        CERT_WARN_DEFAULT,
        "server certificate time left under which /healthz says warn (and, when set, "
        "the start-up warning: 30 days otherwise); e.g. 8h for 24 h certificates",
        example="7d",
    )

    metrics_bind: tuple[str, int] | None = env(
        "MTLS_METRICS_BIND",
        _host_port,
        None,
        "plain-HTTP /metrics and /healthz listener, e.g. 127.0.0.1:9109 (unset: off)",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerSettings:
        env_ = os.environ if environ is None else environ
        return read_env(cls, env_, title="mTLS server", check=_check_proxy)

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


def _check_proxy(values: dict[str, object], problems: list[str]) -> None:
    # Only when MTLS_PROXY_ALLOW_FROM is empty: a malformed entry is reported
    # already, and "needs MTLS_PROXY_ALLOW_FROM" would send the reader to set what is set.
    mode = values.get("proxy_protocol")
    if mode not in (None, "off") and values.get("proxy_allow_from") == ():
        problems.append(
            f"MTLS_PROXY_PROTOCOL={mode} needs MTLS_PROXY_ALLOW_FROM: "
            "the load balancer addresses (CIDRs) that may send a PROXY header"
        )
