"""`make demo`: the demo PKI and both services under gunicorn, with the guide's curl checks.

    python demo.py [--pki pki/out]            run the two-service demo until Ctrl-C
    python demo.py [--pki pki/out] --check    run the six curl checks against it

The same services behind HAProxy: `make lb-demo` (python -m deploy.lb_demo).

The curl checks are the guide's, plus the DN policy's two answers; they are
also what the end-to-end tests run (tests/test_e2e_services.py).

The banner with the URLs is printed once both services answer (the User
Service's /healthz over mutual TLS, a TLS handshake with the Home Page), not
after a guess; a service that does not answer within
devserver.runner.READY_TIMEOUT stops the demo. Starting, probing and
stopping are devserver.runner's; the services' settings are
devserver.services', which deploy/lb_demo.py uses too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from devserver import runner, services
from devserver.services import HOME_PORT, USER_PORT

ROOT = Path(__file__).resolve().parent
FORBIDDEN_BODY = '{"message": "Certificate subject is not recognized!"}'


@dataclass(frozen=True)
class CurlCheck:
    title: str
    args: tuple[str, ...]
    expected: str
    ok_exits: frozenset[int]
    status: str | None = None
    body: str | None = None


@dataclass(frozen=True)
class CurlResult:
    check: CurlCheck
    exit_code: int
    status: str
    body: str
    stderr: str

    @property
    def passed(self) -> bool:
        c = self.check
        if self.exit_code not in c.ok_exits:
            return False
        if c.status is not None and self.status != c.status:
            return False
        return c.body is None or self.body.strip() == c.body

    @property
    def actual(self) -> str:
        if self.status and self.status != "000":
            return f"HTTP {self.status} {self.body.strip()[:80]}"
        lines = self.stderr.strip().splitlines()
        said = next((li for li in lines if li.startswith("curl:")), lines[-1] if lines else "")
        return f"curl exit {self.exit_code}: {said}"


def seed_checks(pki: Path, base: str = f"localhost:{USER_PORT}") -> list[CurlCheck]:
    """The guide's curl checks (plain HTTP, untrusted root, no cert) and the policy's answers."""
    root = str(pki / "root.crt")

    def as_(name: str) -> tuple[str, ...]:
        return (
            "--cacert",
            root,
            "--cert",
            str(pki / f"{name}-chain.crt"),
            "--key",
            str(pki / f"{name}.key"),
        )

    # TLS 1.2 refuses a client certificate inside the handshake (curl exit 35);
    # TLS 1.3 sends the alert after the client's Finished, so curl meets it on
    # its first read (56) or, when the server has already closed, on its first
    # write (55). All three are "the handshake was refused"; none is an answer.
    refused = frozenset({35, 55, 56})
    return [
        CurlCheck(
            "plain HTTP on the TLS port",
            (f"http://{base}/",),
            "no HTTP answer (empty reply / reset)",
            frozenset({52, 56, 1}),
        ),
        CurlCheck(
            "HTTPS without trusting our root",
            (f"https://{base}/",),
            "certificate problem (exit 60)",
            frozenset({60}),
        ),
        CurlCheck(
            "trusted root, no client certificate",
            ("--cacert", root, f"https://{base}/users/1"),
            "handshake refused",
            refused,
        ),
        CurlCheck(
            "homepage certificate",
            (*as_("homepage"), f"https://{base}/users/1"),
            "200 JSON",
            frozenset({0}),
            status="200",
        ),
        CurlCheck(
            "eventservice certificate (trusted CA, DN not allowed)",
            (*as_("eventservice"), f"https://{base}/users/1"),
            f"403 {FORBIDDEN_BODY}",
            frozenset({0}),
            status="403",
            body=FORBIDDEN_BODY,
        ),
        CurlCheck(
            "rogue certificate (own CA, homepage's DN)",
            (*as_("rogue"), f"https://{base}/users/1"),
            "handshake refused",
            refused,
        ),
    ]


def run_check(check: CurlCheck, timeout: float = 15.0) -> CurlResult:
    cmd = ["curl", "-sS", "--max-time", str(int(timeout)), "-w", "\n%{http_code}", *check.args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 5, check=False)
    body, _, status = proc.stdout.rpartition("\n")
    return CurlResult(check, proc.returncode, status.strip(), body, proc.stderr)


def print_checks(results: Sequence[CurlResult]) -> bool:
    for r in results:
        mark = "PASS" if r.passed else "FAIL"
        print(f"[{mark}] {r.check.title}")
        print(f"       curl {' '.join(r.check.args)}")
        print(f"       expected: {r.check.expected}")
        print(f"       actual:   {r.actual}")
    return all(r.passed for r in results)


def banner(pki: Path) -> str:
    rel = os.path.relpath(pki, Path.cwd())
    return f"""
  User Service   https://localhost:{USER_PORT}   (client certificate required)
  Home Page      https://localhost:{HOME_PORT}/  (open in a browser that trusts {rel}/root.crt)

  Try (the guide's checks):
    curl http://localhost:{USER_PORT}/                                   # no HTTP answer
    curl https://localhost:{USER_PORT}/                                  # certificate problem
    curl --cacert {rel}/root.crt https://localhost:{USER_PORT}/users/1   # refused: no cert
    curl --cacert {rel}/root.crt --cert {rel}/homepage-chain.crt --key {rel}/homepage.key https://localhost:{USER_PORT}/users/1
    curl --cacert {rel}/root.crt --cert {rel}/eventservice-chain.crt --key {rel}/eventservice.key https://localhost:{USER_PORT}/users/1
    curl --cacert {rel}/root.crt --cert {rel}/rogue-chain.crt --key {rel}/rogue.key https://localhost:{USER_PORT}/users/1
  Or all six at once:  make check-demo
  Ctrl-C stops both services.
"""


def run_demo(pki: Path) -> int:
    services.ensure_pki(pki)
    user_env, home_env = services.service_envs(pki)
    probes = [
        services.userservice_probe(pki, "the User Service", ("127.0.0.1", USER_PORT)),
        services.homepage_probe(pki),
    ]
    procs = [
        services.start_service(services.USER_APP, f"127.0.0.1:{USER_PORT}", user_env),
        services.start_service(services.HOME_APP, f"127.0.0.1:{HOME_PORT}", home_env),
    ]
    return runner.supervise(procs, banner(pki), probes)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pki", type=Path, default=ROOT / "pki" / "out")
    parser.add_argument(
        "--check", action="store_true", help="run the curl checks against a running demo"
    )
    args = parser.parse_args(argv)
    pki = args.pki.resolve()
    if args.check:
        return 0 if print_checks([run_check(c) for c in seed_checks(pki)]) else 1
    return run_demo(pki)


if __name__ == "__main__":
    sys.exit(main())
