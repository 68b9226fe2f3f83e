"""Home Page settings: the ``HOMEPAGE_*`` env vars, each declared once (mtls.envconfig).

Relative paths are taken from the current directory at start-up (``make
demo`` runs from the repository root, where ``pki/out/`` lives) and made
absolute right away.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mtls.client import ClientSettings
from mtls.envconfig import (
    Invalid,
    dn_regex,
    env,
    password_file,
    read_env,
    seconds,
    variable_for,
)
from mtls.errors import CertificateFileError, ConfigError

DEFAULT_USERSERVICE_URL = "https://localhost:8443"
#: The demo's operator identity (``pki demo``), the only one allowed on ``/internal/*``.
DEFAULT_OPS_DN = r"CN=ops\.internal,OU=Operators,O=Example"

_PKCS12_SUFFIXES = (".p12", ".pfx")
_FIX = (
    "run `make demo` (or `pki demo --dir pki/out`) to create the demo PKI, "
    "or point {var} at your own file"
)


def _url(var: str, raw: str) -> str:
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme != "https"
        or not parts.hostname
        or parts.query
        or parts.fragment
    ):
        raise Invalid(
            f"{var}={raw!r} is not an https:// URL with a host, e.g. {DEFAULT_USERSERVICE_URL}"
        )
    return raw.rstrip("/")


def _file(var: str, raw: str) -> Path:
    path = Path(raw).absolute()
    if path.is_dir():
        raise Invalid(f"{var}: {path} is a directory, not a file; " + _FIX.format(var=var))
    if not path.is_file():
        raise Invalid(f"{var}: {path} does not exist; " + _FIX.format(var=var))
    return path


def _any_path(var: str, raw: str) -> Path:
    return Path(raw).absolute()


@dataclass(frozen=True)
class HomePageEnv:
    """The ``HOMEPAGE_*`` variables as declared: each once, with its default and meaning."""

    userservice_url: str = env(
        "HOMEPAGE_USERSERVICE_URL",
        _url,
        doc="the User Service",
        raw_default=DEFAULT_USERSERVICE_URL,
    )
    client_cert: Path = env(
        "HOMEPAGE_CLIENT_CERT",
        _file,
        doc="our chain (or a .p12)",
        raw_default="pki/out/homepage-chain.crt",
    )
    # Checked in _check: not used (nor required to exist) with a PKCS#12 cert.
    client_key: Path = env(
        "HOMEPAGE_CLIENT_KEY", _any_path, doc="its key", raw_default="pki/out/homepage.key"
    )
    ca_certs: Path = env(
        "HOMEPAGE_CA_CERTS", _file, doc="the root bundle", raw_default="pki/out/root.crt"
    )
    key_password: bytes | None = env(
        "HOMEPAGE_CLIENT_KEY_PASSWORD_FILE", password_file, None, "the key's or .p12's password"
    )
    userservice_dn: re.Pattern[str] | None = env(
        "HOMEPAGE_USERSERVICE_DN",
        dn_regex,
        None,
        "regex the User Service's DN must match",
        blank_is_unset=False,
    )
    ops_dn: re.Pattern[str] = env(
        "HOMEPAGE_OPS_DN",
        dn_regex,
        doc="regex for /internal/*",
        raw_default=DEFAULT_OPS_DN,
        blank_is_unset=False,
    )
    connect_timeout: float = env(
        "HOMEPAGE_CONNECT_TIMEOUT", seconds(0.001, 300), 3.0, "seconds to connect + handshake"
    )
    read_timeout: float = env(
        "HOMEPAGE_READ_TIMEOUT", seconds(0.001, 300), 10.0, "seconds to wait for an answer"
    )


def _check(values: dict[str, Any], problems: list[str]) -> None:
    cert = values.get("client_cert")
    if cert is not None and cert.suffix.lower() in _PKCS12_SUFFIXES:
        values["client_key"] = None  # the key is inside the PKCS#12
        return
    key = values.get("client_key")
    if key is not None:
        try:
            _file("HOMEPAGE_CLIENT_KEY", str(key))
        except Invalid as e:
            problems.extend(e.problems)


@dataclass(frozen=True)
class HomePageSettings:
    """What the Home Page needs.

    userservice_url: base URL of the User Service, https only, no trailing slash.
    client: our identity, the trust bundle, the optional server DN regex
      (``HOMEPAGE_USERSERVICE_DN``) and the timeouts, for ``mtls.client``.
      With ``HOMEPAGE_CLIENT_CERT`` ending in .p12/.pfx, ``HOMEPAGE_CLIENT_KEY``
      is not used (the key is inside; its password comes from the password file).
    ops_dn: compiled regex that must fullmatch the caller's DN for ``/internal/*``.
    """

    userservice_url: str
    client: ClientSettings
    ops_dn: re.Pattern[str]
    #: The variables as read: which one chose a file, for messages (``blame``).
    env: HomePageEnv | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HomePageSettings:
        read = read_env(
            HomePageEnv, os.environ if environ is None else environ, title="Home Page", check=_check
        )
        client = ClientSettings(
            cert=read.client_cert,
            key=read.client_key,
            ca_certs=read.ca_certs,
            key_password=read.key_password,
            server_dn=read.userservice_dn,
            connect_timeout=read.connect_timeout,
            read_timeout=read.read_timeout,
            peer_name="the User Service",
        )
        return cls(
            userservice_url=read.userservice_url, client=client, ops_dn=read.ops_dn, env=read
        )

    def blame(self, error: CertificateFileError) -> ConfigError:
        """``error`` (a file that cannot serve) as one line naming the setting that chose it."""
        found = (variable_for(self.env, f) for f in error.files) if self.env else ()
        named = dict.fromkeys(var for var in found if var)
        subject = ", ".join(named) or "HOMEPAGE_CLIENT_CERT/KEY/CA_CERTS"
        return ConfigError(
            f"invalid Home Page settings: {subject}: " + " ".join(str(error).split())
        )
