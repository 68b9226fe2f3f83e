"""`make lb-demo`: the User Service twice behind HAProxy in TCP passthrough, and the Home Page.

    python -m deploy.lb_demo [--pki pki/out]

Addresses (loopback aliases, which Linux answers without any setup):

    clients --> 127.0.0.1:8443  HAProxy (deploy/haproxy.cfg)
                   | connects from 127.0.0.2, prepends a PROXY v2 header
                   +--> 127.0.0.3:8443  User Service #1   MTLS_PROXY_ALLOW_FROM=127.0.0.2/32
                   +--> 127.0.0.4:8443  User Service #2   (both share var/userservice.db)
    browser --> 127.0.0.1:9443  Home Page, calling https://localhost:8443 (the LB)

HAProxy binds where the plain demo's User Service listens, so the README's
URL and curl commands stay the same; its outgoing source address is a
different one (127.0.0.2) so that the backends can trust exactly the LB and
still see every other peer (here: 127.0.0.1, you) as what it is.

The services' settings and probes are devserver.services' (the plain demo's
too); starting, probing and stopping are devserver.runner's. The helpers
here are also what tests/test_e2e_loadbalancer.py uses to run the shipped
haproxy.cfg, so the demo and the tests cannot drift apart.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from devserver import runner, services
from devserver.services import HOME_PORT, USER_PORT
from pki import store

ROOT = runner.ROOT
CONFIG = Path(__file__).resolve().parent / "haproxy.cfg"
LB_BIND = ("127.0.0.1", USER_PORT)
LB_SOURCE = "127.0.0.2"
BACKENDS = (("127.0.0.3", USER_PORT), ("127.0.0.4", USER_PORT))
BUNDLE_NAME = "lb-bundle.pem"


def build_lb_bundle(pki: Path, dest: Path | None = None) -> Path:
    """Write lb-chain.crt + lb.key as one PEM (mode 0600) and return its path.

    HAProxy's `crt` wants certificate, chain and key in a single file. It is
    rebuilt on every start so a renewed `lb` certificate is picked up; the
    write is atomic, like every key file in this project.
    """
    dest = dest or pki / BUNDLE_NAME
    fix = "run `pki issue lb --client --cn lb.internal --ou LoadBalancers` (or `pki demo`)"
    chain = store.read_bytes(pki / "lb-chain.crt", what="the LB's certificate chain", fix=fix)
    key = store.read_bytes(pki / "lb.key", what="the LB's key", fix=fix)
    store.write_atomic(dest, chain.rstrip(b"\n") + b"\n" + key, mode=store.KEY_MODE)
    return dest


def haproxy_env(
    *,
    bind: tuple[str, int],
    source: str,
    backends: Sequence[tuple[str, int]],
    ca_file: Path,
    client_pem: Path,
) -> dict[str, str]:
    """The LB_* variables deploy/haproxy.cfg reads (it has one `server` line per backend)."""
    if len(backends) != 2:
        raise ValueError(f"deploy/haproxy.cfg has two server lines, got {len(backends)} backends")
    env = {
        "LB_BIND": f"{bind[0]}:{bind[1]}",
        "LB_SOURCE": source,
        "LB_CA_FILE": str(ca_file),
        "LB_CLIENT_PEM": str(client_pem),
    }
    for number, (host, port) in enumerate(backends, start=1):
        env[f"LB_BACKEND_{number}"] = f"{host}:{port}"
    return env


def haproxy_command(config: Path = CONFIG, *, check_only: bool = False) -> list[str]:
    """Foreground HAProxy (-db: no daemon, logs on stdout), or only a config check (-c)."""
    return ["haproxy", "-c" if check_only else "-db", "-f", str(config)]


def backend_env(pki: Path, lb_source: str) -> dict[str, str]:
    """A User Service instance that requires a PROXY v2 header from the LB, and only from it."""
    return {
        **services.userservice_env(pki),
        "MTLS_PROXY_PROTOCOL": "v2",
        "MTLS_PROXY_ALLOW_FROM": f"{lb_source}/32",
    }


def run_lb_demo(pki: Path) -> int:
    """Start two User Services, HAProxy in front of them, and the Home Page; Ctrl-C stops all."""
    if shutil.which("haproxy") is None:
        print("lb-demo: haproxy is not installed: sudo apt-get install -y haproxy", file=sys.stderr)
        return 2
    services.ensure_pki(pki)
    lb_env = haproxy_env(
        bind=LB_BIND,
        source=LB_SOURCE,
        backends=BACKENDS,
        ca_file=pki / "root.crt",
        client_pem=build_lb_bundle(pki),
    )
    check = subprocess.run(
        haproxy_command(check_only=True),
        env={**os.environ, **lb_env},
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode != 0:
        print(
            f"lb-demo: {CONFIG} is not valid here:\n{check.stdout}{check.stderr}", file=sys.stderr
        )
        return 2

    home_env = services.homepage_env(pki)  # calls https://localhost:8443: the LB
    procs: list[runner.Process] = []
    supervised = False
    try:
        for host, port in BACKENDS:
            procs.append(
                services.start_service(
                    services.USER_APP, f"{host}:{port}", backend_env(pki, LB_SOURCE)
                )
            )
        for number, address in enumerate(BACKENDS, start=1):
            probe = services.userservice_probe(pki, f"User Service #{number}", address)
            runner.wait_until_answering(probe, procs)
        # Started only once the backends answer, so its first checks pass.
        procs.append(
            runner.start_process(haproxy_command(), runner.environment(lb_env, clean=False))
        )
        runner.wait_until_answering(services.userservice_probe(pki, "HAProxy", LB_BIND), procs)
        procs.append(services.start_service(services.HOME_APP, f"127.0.0.1:{HOME_PORT}", home_env))
        supervised = True
        return runner.supervise(
            procs, lb_banner(pki), [services.homepage_probe(pki)], prog="lb-demo"
        )
    except (runner.NotAnswering, KeyboardInterrupt) as e:
        print(f"lb-demo: {str(e) or 'interrupted'}; stopping all", file=sys.stderr)
        return 1
    finally:
        if not supervised:
            runner.stop_all(procs)


def lb_banner(pki: Path) -> str:
    rel = os.path.relpath(pki, Path.cwd())
    rel = str(pki) if rel.startswith("..") else rel
    cert = f"--cacert {rel}/root.crt --cert {rel}/homepage-chain.crt --key {rel}/homepage.key"
    lb = f"https://localhost:{USER_PORT}"
    (h1, p1), (h2, p2) = BACKENDS
    return f"""
  HAProxy        {lb}  (TCP passthrough, {CONFIG.relative_to(ROOT)})
  User Service   https://{h1}:{p1} and https://{h2}:{p2}  (PROXY v2 from {LB_SOURCE} only)
  Home Page      https://localhost:{HOME_PORT}/  (calls the User Service through the LB)

  Through the LB, the User Service sees you (127.0.0.1), not the LB ({LB_SOURCE}):
    curl {cert} {lb}/whoami
  Every access log line above starts with the real client address; HAProxy's
  own lines say which backend served it (userservice/userservice1 or 2).
  A forged PROXY header straight to a backend is refused (see the log):
    curl --haproxy-protocol --connect-to localhost:{p1}:{h1}:{p1} {cert} {lb}/whoami
  Kill one User Service (kill <pid>) and keep curling: HAProxy retries elsewhere.
  Ctrl-C stops everything.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pki", type=Path, default=ROOT / "pki" / "out")
    return run_lb_demo(parser.parse_args(argv).pki.resolve())


if __name__ == "__main__":
    sys.exit(main())
