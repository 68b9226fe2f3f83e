"""Behind a real HAProxy in TCP passthrough: the shipped deploy/haproxy.cfg and two User Services.

Loopback aliases play the hosts: the client is 127.0.0.5, HAProxy listens on
and connects from 127.0.0.2, the User Services are 127.0.0.3 and 127.0.0.4
(MTLS_PROXY_ALLOW_FROM=127.0.0.2/32). Two more User Services trust 127.0.0.6
as their "load balancer", so a raw socket bound there can play a broken LB
(no header, a malformed, oversized or slow one) without touching HAProxy.
Every refusal is asserted together with the log line that gives its reason,
found by the client's own port so parallel noise cannot match it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deploy.lb_demo import (
    BACKENDS,
    CONFIG,
    LB_BIND,
    LB_SOURCE,
    build_lb_bundle,
    haproxy_command,
    haproxy_env,
)
from devserver import runner
from mtls.proxyproto import V2_SIGNATURE, build_v1_header, build_v2_header
from tests.servers import (
    Server,
    client_context,
    free_port,
    isolated_env,
    server_env,
    wait_until_ready,
)
from tests.tools import require_tool

CLIENT = "127.0.0.5"
LB = "127.0.0.2"  # HAProxy listens here and connects to the backends from here
BACKEND_HOSTS = ("127.0.0.3", "127.0.0.4")
FAKE_LB = "127.0.0.6"  # trusted by the behind_fake_lb servers only
# A refused connection is closed before TLS: the client sees EOF or a reset.
REFUSED = (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError)


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    client_port: int  # our side of the TCP connection, as the server should report it


def get(
    address: tuple[str, int],
    ctx: ssl.SSLContext,
    *,
    source: str = CLIENT,
    preamble: bytes = b"",
    pieces: int = 1,
) -> Reply:
    """GET /whoami on a fresh connection from ``source``, after ``preamble`` bytes.

    ``pieces`` > 1 sends the preamble in that many TCP segments, 50 ms apart:
    a load balancer whose header arrives in parts.
    """
    with socket.create_connection(address, timeout=5, source_address=(source, 0)) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        step = max(1, math.ceil(len(preamble) / pieces))
        for start in range(0, len(preamble), step):
            if start:
                time.sleep(0.05)
            raw.sendall(preamble[start : start + step])
        port = raw.getsockname()[1]
        # Strict EOF: a response cut short by a dying server raises instead of looking complete.
        with ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as tls:
            tls.sendall(b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return Reply(int(head.split(b" ")[1]), json.loads(body), port)


def start_userservice(tmp: Path, pki: Path, host: str, **extra: str) -> Server:
    """A User Service in its own session, so a test can crash it (master and workers) at once."""
    env = server_env(pki, "userservice", USERSERVICE_DATABASE_URL=f"sqlite:///{tmp}/u.db")
    env |= {"MTLS_PROXY_PROTOCOL": "v2", **extra}
    port = free_port(host)
    log = tmp / f"userservice-{host}-{port}.log"
    return runner.start_server(
        "wsgi:userservice", isolated_env(env), log, host=host, port=port, new_session=True
    )


@dataclass
class Stack:
    backends: list[Server]
    lb: Server


@contextlib.contextmanager
def haproxy_stack(tmp: Path, pki: Path, ctx: ssl.SSLContext) -> Iterator[Stack]:
    """Two User Services trusting 127.0.0.2, and HAProxy from deploy/haproxy.cfg in front."""
    require_tool("haproxy")
    with contextlib.ExitStack() as cleanup:
        backends = []
        for host in BACKEND_HOSTS:
            backends.append(start_userservice(tmp, pki, host, MTLS_PROXY_ALLOW_FROM=f"{LB}/32"))
            cleanup.callback(backends[-1].stop)
        for backend in backends:
            wait_until_ready(backend, ctx)  # from 127.0.0.1: not the LB, no header needed
        lb_env = haproxy_env(
            bind=(LB, free_port(LB)),
            source=LB,
            ca_file=pki / "root.crt",
            backends=[(b.host, b.port) for b in backends],
            client_pem=build_lb_bundle(pki, tmp / "lb-bundle.pem"),
        )
        log = tmp / "haproxy.log"
        env = runner.environment(lb_env, clean=False)
        process = runner.start_process(haproxy_command(), env, log_path=log)
        host, _, port = lb_env["LB_BIND"].partition(":")
        lb = Server(host, int(port), process, log, lb_env)
        cleanup.callback(lb.stop)
        wait_until_ready(lb, ctx)
        yield Stack(backends, lb)


def lines_in_log(*servers: Server, needle: str, at_least: int = 1) -> list[str]:
    """The logs' lines containing ``needle``, once there are ``at_least`` (polled, 10 s at most).

    A server logs a request after answering it, so the line may trail the reply.
    """
    deadline = time.monotonic() + 10
    while True:
        lines = [line for s in servers for line in s.log().splitlines() if needle in line]
        if len(lines) >= at_least or time.monotonic() > deadline:
            logs = "\n".join(s.log() for s in servers)
            assert len(lines) >= at_least, f"{needle!r} {len(lines)}x, not {at_least}x:\n{logs}"
            return lines
        time.sleep(0.05)


def refused_before_tls(server: Server, ctx: ssl.SSLContext, source: str, preamble: bytes) -> str:
    """Send ``preamble``, expect the TLS handshake to find the connection closed; -> log prefix."""
    with socket.create_connection((server.host, server.port), source_address=(source, 0)) as raw:
        port = raw.getsockname()[1]
        raw.sendall(preamble)
        with pytest.raises(REFUSED):
            handshake_over(raw, ctx)
    return f"mTLS handshake refused: peer={source}:{port} reason="


def handshake_over(raw: socket.socket, ctx: ssl.SSLContext) -> None:
    """A client handshake on ``raw`` through memory BIOs; raises what it meets.

    Not ctx.wrap_socket(): on a socket the server has already closed, with
    bytes pending, CPython raises from inside SSLSocket's constructor
    (its CVE-2023-40217 guard) and leaks the half-made SSLSocket.
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    raw.settimeout(10)
    for _ in range(50):  # a handful of flights; bounded either way
        try:
            tls.do_handshake()
            raw.sendall(outgoing.read())
            return
        except ssl.SSLWantReadError:
            raw.sendall(outgoing.read())
            data = raw.recv(65536)
            if not data:
                raise ssl.SSLEOFError(8, "EOF during the handshake") from None
            incoming.write(data)
    raise AssertionError("the handshake neither finished nor failed")


@pytest.fixture(scope="module")
def ctx(demo_pki: Path) -> ssl.SSLContext:
    return client_context(demo_pki, "homepage")


@pytest.fixture(scope="module")
def stack(
    demo_pki: Path, ctx: ssl.SSLContext, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with haproxy_stack(tmp_path_factory.mktemp("lb"), demo_pki, ctx) as running_stack:
        yield running_stack


@pytest.fixture(scope="module")
def behind_fake_lb(
    demo_pki: Path, ctx: ssl.SSLContext, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Server]]:
    """User Services (v2 and v1) that require a header from 127.0.0.6, within 1 s."""
    tmp = tmp_path_factory.mktemp("fake-lb")
    strict = {"MTLS_PROXY_ALLOW_FROM": f"{FAKE_LB}/32", "MTLS_HANDSHAKE_TIMEOUT": "1"}
    with contextlib.ExitStack() as cleanup:
        servers = {}
        for mode in ("v2", "v1"):
            servers[mode] = start_userservice(
                tmp, demo_pki, "127.0.0.3", MTLS_PROXY_PROTOCOL=mode, **strict
            )
            cleanup.callback(servers[mode].stop)
        for server in servers.values():
            wait_until_ready(server, ctx)
        yield servers


def test_shipped_config_with_the_demos_addresses_is_valid_for_the_installed_haproxy(
    demo_pki: Path, tmp_path: Path
) -> None:
    require_tool("haproxy")
    pem = build_lb_bundle(demo_pki, tmp_path / "lb.pem")
    env = haproxy_env(
        bind=LB_BIND,
        source=LB_SOURCE,
        backends=BACKENDS,
        ca_file=demo_pki / "root.crt",
        client_pem=pem,
    )
    command = haproxy_command(check_only=True)
    run = subprocess.run(
        command, env={**os.environ, **env}, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Configuration file is valid" in run.stdout + run.stderr
    assert "mode tcp" in CONFIG.read_text()


def test_lb_bundle_is_chain_then_key_readable_by_its_owner_only(
    demo_pki: Path, tmp_path: Path
) -> None:
    bundle = build_lb_bundle(demo_pki, tmp_path / "lb-bundle.pem")
    text = bundle.read_text()
    assert (bundle.stat().st_mode & 0o777) == 0o600
    assert text.startswith((demo_pki / "lb-chain.crt").read_text().rstrip("\n"))
    assert text.count("BEGIN CERTIFICATE") == 2
    assert text.rstrip().endswith("END PRIVATE KEY-----")


def test_real_client_address_reaches_whoami_and_the_access_log_through_haproxy(
    stack: Stack, ctx: ssl.SSLContext
) -> None:
    reply = get((stack.lb.host, stack.lb.port), ctx)
    assert reply.status == 200
    assert (reply.body["remote_addr"], reply.body["remote_port"]) == (CLIENT, reply.client_port)
    assert reply.body["subject_dn"] == "CN=homepage.internal,OU=Services,O=Example"
    lines_in_log(*stack.backends, needle=f'{CLIENT}:{reply.client_port} "GET /whoami HTTP/1.1" 200')


def test_both_backends_serve_in_turn(stack: Stack, ctx: ssl.SSLContext) -> None:
    ports = [get((stack.lb.host, stack.lb.port), ctx).client_port for _ in range(6)]
    for backend in stack.backends:
        served = lines_in_log(backend, needle=f"{CLIENT}:")
        assert any(f"{CLIENT}:{port} " in line for line in served for port in ports)


def test_health_checks_authenticate_as_the_lb_and_cause_no_refusals(stack: Stack) -> None:
    for backend in stack.backends:
        # v2 LOCAL: the check keeps the LB's own address; its client cert is lb's.
        checks = lines_in_log(backend, needle=f"{LB}:", at_least=2)
        assert all('"GET /healthz HTTP/1.1" 200' in line for line in checks)
        assert all('dn="CN=lb.internal,OU=LoadBalancers,O=Example"' in line for line in checks)
        assert f"handshake refused: peer={LB}" not in backend.log()
    assert "is DOWN" not in stack.lb.log()


@pytest.mark.parametrize(
    "header",
    [
        build_v2_header(("10.9.9.9", 1234), ("127.0.0.3", 443)),
        build_v1_header(("10.9.9.9", 1234), ("127.0.0.3", 443)),
    ],
    ids=["v2", "v1"],
)
def test_forged_proxy_header_straight_to_a_backend_from_outside_the_allow_list_is_refused(
    stack: Stack, ctx: ssl.SSLContext, header: bytes
) -> None:
    backend = stack.backends[0]
    refusal = refused_before_tls(backend, ctx, CLIENT, header)
    reason = "proxy_header (sent a PROXY header but is not in MTLS_PROXY_ALLOW_FROM)"
    lines_in_log(backend, needle=refusal + reason)
    assert "10.9.9.9" not in backend.log()


def test_client_outside_the_allow_list_without_a_header_is_served_straight_by_a_backend(
    stack: Stack, ctx: ssl.SSLContext
) -> None:
    backend = stack.backends[1]
    reply = get((backend.host, backend.port), ctx)
    assert (reply.status, reply.body["remote_addr"]) == (200, CLIENT)


@pytest.mark.parametrize(
    ("mode", "preamble", "reason"),
    [
        ("v2", b"", "does not start with a PROXY v2 header: first bytes 16 03"),
        ("v2", V2_SIGNATURE + b"\x21\x99\x00\x0c" + bytes(12), "invalid address family"),
        ("v2", V2_SIGNATURE + b"\x21\x11\x07\xd0" + bytes(2000), "at most 1024 are accepted"),
        ("v2", build_v1_header(("10.9.9.9", 1), ("127.0.0.3", 2)), "only v2 is accepted"),
        ("v1", b"PROXY TCP4 10.9.9.9 " + b"1" * 120 + b"\r\n", "no CRLF within 107 bytes"),
        ("v1", b"PROXY TCP4 10.9.9.999 127.0.0.3 1 2\r\n", "is not an IPv4 address"),
    ],
    ids=["no-header", "malformed-v2", "oversized-v2", "v1-on-v2", "oversized-v1", "bad-v1-address"],
)
def test_lb_address_without_a_valid_header_is_refused_with_the_reason_logged(
    behind_fake_lb: dict[str, Server], ctx: ssl.SSLContext, mode: str, preamble: bytes, reason: str
) -> None:
    server = behind_fake_lb[mode]
    refusal = refused_before_tls(server, ctx, FAKE_LB, preamble)
    assert reason in lines_in_log(server, needle=refusal)[0]


def test_slow_proxy_header_is_closed_after_the_handshake_timeout(
    behind_fake_lb: dict[str, Server],
) -> None:
    server = behind_fake_lb["v2"]
    header = build_v2_header(("10.9.9.9", 1234), ("127.0.0.3", 443))
    with socket.create_connection((server.host, server.port), source_address=(FAKE_LB, 0)) as raw:
        port = raw.getsockname()[1]
        raw.sendall(header[:10])  # and never the rest
        raw.settimeout(15)  # beyond the bound below: a slow close fails the bound, not recv()
        started = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            assert raw.recv(1) == b""
        waited = time.monotonic() - started
    # MTLS_HANDSHAKE_TIMEOUT=1: never closed early. The worker checks deadlines about
    # once a second, so ~2 s is usual; the upper bound only proves it is closed at all,
    # with room for a loaded 2-core CI box.
    assert 0.8 < waited < 9
    reason = "timeout (PROXY header not completed within 1s)"
    lines_in_log(server, needle=f"peer={FAKE_LB}:{port} reason={reason}")


@pytest.mark.parametrize(
    ("mode", "header", "expected"),
    [
        ("v2", build_v2_header(None, None, command="LOCAL"), FAKE_LB),  # a health check
        (
            "v2",
            build_v2_header(("10.9.9.9", 4321), ("127.0.0.3", 443), tlvs=[(0x02, b"x")]),
            "10.9.9.9",
        ),
        ("v2", build_v2_header(("2001:db8::7", 4321), ("::1", 443)), "2001:db8::7"),
        ("v1", build_v1_header(("10.1.2.3", 4321), ("127.0.0.3", 443)), "10.1.2.3"),
        ("v1", b"PROXY UNKNOWN\r\n", FAKE_LB),
    ],
    ids=["v2-local", "v2-tcp4-tlv", "v2-tcp6", "v1-tcp4", "v1-unknown"],
)
@pytest.mark.parametrize("pieces", [1, 3], ids=["whole", "in-parts"])
def test_valid_header_from_the_lb_address_sets_the_client_address(
    behind_fake_lb: dict[str, Server],
    ctx: ssl.SSLContext,
    mode: str,
    header: bytes,
    expected: str,
    pieces: int,
) -> None:
    server = behind_fake_lb[mode]
    reply = get((server.host, server.port), ctx, source=FAKE_LB, preamble=header, pieces=pieces)
    assert (reply.status, reply.body["remote_addr"]) == (200, expected)
    if expected != FAKE_LB:
        assert reply.body["remote_port"] == 4321


def test_a_crashed_backend_loses_no_request_of_a_client_that_retries_once(
    demo_pki: Path, ctx: ssl.SSLContext, tmp_path: Path
) -> None:
    with haproxy_stack(tmp_path, demo_pki, ctx) as running_stack:
        lb, (first, second) = running_stack.lb, running_stack.backends

        def fetch(number: int) -> int:
            """GET /whoami through the LB: idempotent, so one retry after a short backoff.

            The backoff matters: for a few milliseconds the dying process's
            listening socket still completes TCP handshakes; such a connection
            fails after HAProxy has sent bytes on it, which it cannot redispatch.
            """
            if number == 50:  # a hard crash, master and workers, with requests in flight
                os.killpg(first.process.pid, signal.SIGKILL)
            try:
                assert get((lb.host, lb.port), ctx).status == 200
                return 0
            except OSError:
                time.sleep(0.25)
                assert get((lb.host, lb.port), ctx).status == 200
                return 1

        with ThreadPoolExecutor(max_workers=4) as clients:
            retries = list(clients.map(fetch, range(200)))
        assert len(retries) == 200
        assert sum(retries) <= 4  # at most the requests in flight when it died
        # Both served before the crash; only the survivor after it.
        assert len(lines_in_log(first, needle=f"{CLIENT}:")) <= 54
        lines_in_log(second, needle=f"{CLIENT}:", at_least=146)
        # HAProxy retried the dead server's turns on the other one (redispatch,
        # the "+1" retries field of its log), then its health check took it out.
        served = lines_in_log(lb, needle=f"{CLIENT}:", at_least=200)
        redispatched = [line for line in served if re.search(r"/\+\d+ \d+/\d+$", line)]
        assert redispatched, "\n".join(served)
        assert all(" userservice/userservice2 " in line for line in redispatched)
        lb.wait_for_log("Server userservice/userservice1 is DOWN")
