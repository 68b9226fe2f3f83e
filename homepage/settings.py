"""Home Page settings: the ``HOMEPAGE_*`` env vars parsed once, all problems at once.

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
from urllib.parse import urlsplit

from mtls.client import ClientSettings
from mtls.errors import CertificateFileError, ConfigError, PolicyError
from mtls.policy import compile_dn_policy
from mtls.settings import parse_seconds

DEFAULT_USERSERVICE_URL = "https://localhost:8443"
DEFAULT_CLIENT_CERT = "pki/out/homepage-chain.crt"
DEFAULT_CLIENT_KEY = "pki/out/homepage.key"
DEFAULT_CA_CERTS = "pki/out/root.crt"
#: The demo's operator identity (``pki demo``), the only one allowed on ``/internal/*``.
DEFAULT_OPS_DN = r"CN=ops\.internal,OU=Operators,O=Example"
DEFAULT_CONNECT_TIMEOUT = 3.0
DEFAULT_READ_TIMEOUT = 10.0

_PKCS12_SUFFIXES = (".p12", ".pfx")
_FIX = (
    "run `make demo` (or `pki demo --dir pki/out`) to create the demo PKI, "
    "or point {var} at your own file"
)


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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HomePageSettings:
        env = os.environ if environ is None else environ
        problems: list[str] = []

        url = _url(env.get("HOMEPAGE_USERSERVICE_URL", "").strip() or DEFAULT_USERSERVICE_URL)
        if url is None:
            problems.append(
                f"HOMEPAGE_USERSERVICE_URL={env.get('HOMEPAGE_USERSERVICE_URL')!r} is not an "
                f"https:// URL with a host, e.g. {DEFAULT_USERSERVICE_URL}"
            )
        cert = _file(env, "HOMEPAGE_CLIENT_CERT", DEFAULT_CLIENT_CERT, problems)
        key: Path | None = None
        if cert.suffix.lower() not in _PKCS12_SUFFIXES:
            key = _file(env, "HOMEPAGE_CLIENT_KEY", DEFAULT_CLIENT_KEY, problems)
        ca_certs = _file(env, "HOMEPAGE_CA_CERTS", DEFAULT_CA_CERTS, problems)
        password = _password(env, problems)
        server_dn = _regex(env, "HOMEPAGE_USERSERVICE_DN", problems)
        ops_dn: re.Pattern[str] | None = None
        try:
            ops_dn = compile_dn_policy(
                env.get("HOMEPAGE_OPS_DN", DEFAULT_OPS_DN), setting="HOMEPAGE_OPS_DN"
            )
        except PolicyError as exc:
            problems.append(str(exc))
        connect = parse_seconds(
            env,
            "HOMEPAGE_CONNECT_TIMEOUT",
            DEFAULT_CONNECT_TIMEOUT,
            problems,
            minimum=0.001,
            maximum=300,
        )
        read = parse_seconds(
            env, "HOMEPAGE_READ_TIMEOUT", DEFAULT_READ_TIMEOUT, problems, minimum=0.001, maximum=300
        )

        if problems or url is None or ops_dn is None:
            raise ConfigError("invalid Home Page settings:\n  - " + "\n  - ".join(problems))
        client = ClientSettings(
            cert=cert,
            key=key,
            ca_certs=ca_certs,
            key_password=password,
            server_dn=server_dn,
            connect_timeout=connect,
            read_timeout=read,
            peer_name="the User Service",
        )
        return cls(userservice_url=url, client=client, ops_dn=ops_dn)

    def blame(self, error: CertificateFileError) -> ConfigError:
        """``error`` (a file that cannot serve) as one line naming the setting that chose it."""
        variables = {
            self.client.cert: "HOMEPAGE_CLIENT_CERT",
            self.client.key: "HOMEPAGE_CLIENT_KEY",
            self.client.ca_certs: "HOMEPAGE_CA_CERTS",
        }
        named = dict.fromkeys(variables[f] for f in error.files if f in variables)
        subject = ", ".join(named) or "HOMEPAGE_CLIENT_CERT/KEY/CA_CERTS"
        return ConfigError(
            f"invalid Home Page settings: {subject}: " + " ".join(str(error).split())
        )


def _url(raw: str) -> str | None:
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        return None
    return raw.rstrip("/")


def _file(env: Mapping[str, str], var: str, default: str, problems: list[str]) -> Path:
    path = Path(env.get(var, "").strip() or default).absolute()
    if path.is_dir():
        problems.append(f"{var}: {path} is a directory, not a file; " + _FIX.format(var=var))
    elif not path.is_file():
        problems.append(f"{var}: {path} does not exist; " + _FIX.format(var=var))
    return path


def _password(env: Mapping[str, str], problems: list[str]) -> bytes | None:
    """The key's password from a file (never from the environment itself, which leaks)."""
    var = "HOMEPAGE_CLIENT_KEY_PASSWORD_FILE"
    raw = env.get(var, "").strip()
    if not raw:
        return None
    try:
        return Path(raw).read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        problems.append(f"{var}={raw!r} cannot be read ({exc.strerror or exc})")
        return None


def _regex(env: Mapping[str, str], var: str, problems: list[str]) -> re.Pattern[str] | None:
    raw = env.get(var, "").strip()
    if not raw:
        return None
    try:
        return re.compile(raw)
    except re.error as exc:
        problems.append(f"{var}={raw!r} is not a valid regular expression ({exc})")
        return None
