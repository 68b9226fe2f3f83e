"""The demo's two services: where they listen, their MTLS_*/HOMEPAGE_* settings, their probes.

What both `make demo` (demo.py) and `make lb-demo` (deploy/lb_demo.py) start,
so that neither demo imports the other. The ports are the documented 8443 and 9443 (the
guide's curl commands use them); the files are what `pki demo` writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from devserver import runner
from devserver.runner import Probe, client_context

USER_PORT = 8443
HOME_PORT = 9443
USER_URL = f"https://localhost:{USER_PORT}"
USER_APP = "wsgi:userservice"
HOME_APP = "wsgi:homepage"


def tls_env(pki: Path, name: str) -> dict[str, str]:
    """A server presenting pki/NAME-chain.crt, trusting pki/root.crt, checking pki/crl.pem."""
    return {
        "MTLS_CERTFILE": str(pki / f"{name}-chain.crt"),
        "MTLS_KEYFILE": str(pki / f"{name}.key"),
        "MTLS_CA_CERTS": str(pki / "root.crt"),
        "MTLS_CRLFILE": str(pki / "crl.pem"),
    }


def userservice_env(pki: Path) -> dict[str, str]:
    """The User Service: client certificates required (the default), the demo PKI's files."""
    return tls_env(pki, "userservice")


def homepage_env(pki: Path, user_url: str = USER_URL) -> dict[str, str]:
    """The Home Page: browsers need no certificate; it calls ``user_url`` as `homepage`."""
    return {
        **tls_env(pki, "homepage"),
        "MTLS_CLIENT_AUTH": "optional",
        "HOMEPAGE_USERSERVICE_URL": user_url,
        "HOMEPAGE_CLIENT_CERT": str(pki / "homepage-chain.crt"),
        "HOMEPAGE_CLIENT_KEY": str(pki / "homepage.key"),
        "HOMEPAGE_CA_CERTS": str(pki / "root.crt"),
    }


def service_envs(pki: Path, user_url: str = USER_URL) -> tuple[dict[str, str], dict[str, str]]:
    """The User Service's and the Home Page's settings (the Home Page calls ``user_url``)."""
    return userservice_env(pki), homepage_env(pki, user_url)


def start_service(app: str, bind: str, env: Mapping[str, str]) -> runner.Process:
    """gunicorn for one demo service, logging to our terminal, with the user's environment too.

    Own session: Ctrl-C reaches only the demo's supervisor, which stops each
    gunicorn gracefully with SIGTERM instead of a SIGINT storm.
    """
    return runner.start_process(
        runner.gunicorn_command(app, bind),
        runner.environment(env, clean=False),
        new_session=True,
    )


def userservice_probe(pki: Path, name: str, address: tuple[str, int]) -> Probe:
    """Ready = GET /healthz over mutual TLS (as the Home Page) answers 200."""
    return Probe(name, address, client_context(pki, "homepage"))


def homepage_probe(pki: Path, port: int = HOME_PORT) -> Probe:
    """Ready = a completed handshake: its ``/`` would call the User Service, maybe not up yet."""
    return Probe("the Home Page", ("127.0.0.1", port), client_context(pki, None), path=None)


def ensure_pki(pki: Path) -> None:
    """`pki demo --dir PKI`: builds the demo PKI once, keeps an existing one (exit 2 on failure)."""
    from pki import cli

    if cli.main(["demo", "--dir", str(pki)]) != 0:
        raise SystemExit(2)
