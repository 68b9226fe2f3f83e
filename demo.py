"""`make demo`: the demo PKI and both services under gunicorn, with the seed's curl checks.

    python demo.py [--pki pki/out]            run the two-service demo until Ctrl-C
    python demo.py [--pki pki/out] --check    run the six curl checks against it
    python demo.py [--pki pki/out] --lb       the same behind HAProxy (TCP passthrough)

The curl checks are the seed's, plus the DN policy's two answers; they are
also what the end-to-end tests run (tests/test_e2e_services.py).

The banner with the URLs is printed once both services answer (the User
Service's /healthz over mutual TLS, a TLS handshake with the Home Page), not
after a guess; a service that does not answer within READY_TIMEOUT stops the
demo. deploy/lb_demo.py uses the same probe and supervisor.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
USER_PORT = 8443
HOME_PORT = 9443
FORBIDDEN_BODY = '{"message": "Certificate subject is not recognized!"}'
READY_TIMEOUT = 30.0


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
    """The seed's curl checks (plain HTTP, untrusted root, no cert) and the policy's answers."""
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


def _gunicorn(app: str, bind: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(ROOT / "gunicorn_conf.py"),
        "--bind",
        bind,
        app,
    ]
    # Own session: Ctrl-C reaches only this supervisor, which stops each
    # gunicorn gracefully with SIGTERM instead of a SIGINT storm.
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, start_new_session=True)


def service_envs(pki: Path, user_url: str) -> tuple[dict[str, str], dict[str, str]]:
    def tls(name: str) -> dict[str, str]:
        return {
            "MTLS_CERTFILE": str(pki / f"{name}-chain.crt"),
            "MTLS_KEYFILE": str(pki / f"{name}.key"),
            "MTLS_CA_CERTS": str(pki / "root.crt"),
            "MTLS_CRLFILE": str(pki / "crl.pem"),
        }

    user = tls("userservice")
    home = {
        **tls("homepage"),
        "MTLS_CLIENT_AUTH": "optional",
        "HOMEPAGE_USERSERVICE_URL": user_url,
        "HOMEPAGE_CLIENT_CERT": str(pki / "homepage-chain.crt"),
        "HOMEPAGE_CLIENT_KEY": str(pki / "homepage.key"),
        "HOMEPAGE_CA_CERTS": str(pki / "root.crt"),
    }
    return user, home


def ensure_pki(pki: Path) -> None:
    from pki import cli

    if cli.main(["demo", "--dir", str(pki)]) != 0:
        raise SystemExit(2)


def banner(pki: Path) -> str:
    rel = os.path.relpath(pki, Path.cwd())
    return f"""
  User Service   https://localhost:{USER_PORT}   (client certificate required)
  Home Page      https://localhost:{HOME_PORT}/  (open in a browser that trusts {rel}/root.crt)

  Try (the seed's checks):
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
    ensure_pki(pki)
    user_env, home_env = service_envs(pki, f"https://localhost:{USER_PORT}")
    probes = [
        Probe("the User Service", ("127.0.0.1", USER_PORT), client_context(pki, "homepage")),
        Probe("the Home Page", ("127.0.0.1", HOME_PORT), client_context(pki, None), path=None),
    ]
    procs = [
        _gunicorn("wsgi:userservice", f"127.0.0.1:{USER_PORT}", user_env),
        _gunicorn("wsgi:homepage", f"127.0.0.1:{HOME_PORT}", home_env),
    ]
    return _supervise(procs, banner(pki), probes)


@dataclass(frozen=True)
class Probe:
    """How to tell that one service answers.

    path: GET it over TLS and expect a 200 (``/healthz``); None: a completed
    handshake is the answer (the Home Page's ``/`` would call the User Service).
    """

    name: str
    address: tuple[str, int]
    context: ssl.SSLContext
    path: str | None = "/healthz"


def client_context(pki: Path, name: str | None) -> ssl.SSLContext:
    """Trusting our root only; presenting ``name``'s chain and key unless None."""
    ctx = ssl.create_default_context(cafile=str(pki / "root.crt"))
    if name is not None:
        ctx.load_cert_chain(str(pki / f"{name}-chain.crt"), str(pki / f"{name}.key"))
    return ctx


def wait_until_answering(
    probe: Probe,
    procs: Sequence[subprocess.Popen[bytes]],
    *,
    timeout: float = READY_TIMEOUT,
    stopped: Callable[[], bool] = lambda: False,
) -> None:
    """Poll ``probe`` until it answers; RuntimeError when a process dies or time runs out.

    Returns early (without an answer) once ``stopped()`` says so: Ctrl-C while
    waiting. A bare TCP connect would not prove the worker serves TLS, and
    each would be logged as a refused handshake.
    """
    host, port = probe.address
    deadline = time.monotonic() + timeout
    problem = "no answer"
    while not stopped():
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a process exited while waiting for {probe.name} ({host}:{port})")
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(
                f"{probe.name} ({host}:{port}) did not answer within {timeout:g} s: {problem}"
            )
        try:
            if _answers(probe, timeout=min(2.0, left)):
                return
            problem = f"GET {probe.path} did not answer 200"
        except OSError as exc:  # ssl.SSLError included
            problem = str(exc) or type(exc).__name__
        time.sleep(0.1)


def _answers(probe: Probe, *, timeout: float) -> bool:
    with socket.create_connection(probe.address, timeout=timeout) as raw:
        with probe.context.wrap_socket(raw, server_hostname="localhost") as tls:
            if probe.path is None:
                return True
            request = f"GET {probe.path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            tls.sendall(request.encode())
            return tls.recv(12).startswith(b"HTTP/1.1 200")


def _supervise(
    procs: list[subprocess.Popen[bytes]],
    text: str,
    probes: Sequence[Probe] = (),
    *,
    timeout: float = READY_TIMEOUT,
) -> int:
    """Wait for ``probes``, print ``text``, then run until Ctrl-C/SIGTERM or a process exits.

    Every exit path stops every process. Returns 0 after Ctrl-C, 1 otherwise.
    """
    stopping = False

    def stop(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for probe in probes:
            wait_until_answering(probe, procs, timeout=timeout, stopped=lambda: stopping)
        if not stopping:
            print(text, flush=True)
        while not stopping:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a service exited (see its log above)")
            time.sleep(0.2)
    except RuntimeError as exc:
        print(f"demo: {exc}; stopping all", file=sys.stderr, flush=True)
    finally:
        stop_all(procs)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("demo: stopped", flush=True)
    return 0 if stopping else 1


def stop_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM (gunicorn's graceful stop) to every live process, SIGKILL after 15 s."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pki", type=Path, default=ROOT / "pki" / "out")
    parser.add_argument(
        "--check", action="store_true", help="run the curl checks against a running demo"
    )
    parser.add_argument("--lb", action="store_true", help="run behind HAProxy in TCP passthrough")
    args = parser.parse_args(argv)
    pki = args.pki.resolve()
    if args.check:
        return 0 if print_checks([run_check(c) for c in seed_checks(pki)]) else 1
    if args.lb:
        from deploy.lb_demo import run_lb_demo

        return run_lb_demo(pki)
    return run_demo(pki)


if __name__ == "__main__":
    sys.exit(main())
