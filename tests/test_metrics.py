"""Operating it: /metrics and /healthz on MTLS_METRICS_BIND, each metric moved by a real event.

A real gunicorn with 2 workers; every count is driven by a real handshake or
request (a no-cert client moves reason="no_cert", a revoked certificate
"revoked", a bare TCP probe "probe", a reload the reload metrics), and read
back from the plain-HTTP metrics port the way Prometheus scrapes it.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from mtls.identity import format_serial
from pki import cli as pki_cli
from tests.clients import get
from tests.servers import ECHO, Server, client_context, free_port, running, server_env

UNTIL = 20.0  # seconds to wait for a count to show; each scrape is a poll, not a sleep


@pytest.fixture
def pki(demo_pki: Path, tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    shutil.copytree(demo_pki, d)
    # A trusted caller that the /users policy denies (eventservice is revoked below).
    issue = ["issue", "denied", "--dir", str(d), "--client", "--cn", "denied.internal"]
    assert pki_cli.main(issue) == 0
    assert pki_cli.main(["revoke", "eventservice", "--dir", str(d)]) == 0
    return d


@contextlib.contextmanager
def observed(pki: Path, tmp_path: Path, app: str = ECHO, **extra: str) -> Iterator[Server]:
    port = free_port()
    env = server_env(
        pki,
        "userservice",
        MTLS_CRLFILE=str(pki / "crl.pem"),
        MTLS_METRICS_BIND=f"127.0.0.1:{port}",
        MTLS_RELOAD_INTERVAL="0.2",
        **extra,
    )
    with running(app, env, tmp_path / "server.log", client_context(pki, "homepage")) as server:
        server.env["metrics_port"] = str(port)
        yield server


def scrape(server: Server, path: str = "/metrics") -> tuple[int, str]:
    url = f"http://127.0.0.1:{server.env['metrics_port']}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode()


def samples(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    _, text = scrape(server)
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(server: Server, name: str, **labels: str) -> float:
    return samples(server).get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(server: Server, name: str, at_least: float, **labels: str) -> float:
    deadline = time.monotonic() + UNTIL
    while (seen := value(server, name, **labels)) < at_least:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{name}{labels} = {seen}, wanted >= {at_least}:\n{scrape(server)[1]}"
            )
        time.sleep(0.1)
    return seen


def refused(server: Server, ctx: ssl.SSLContext) -> None:
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        get(server, ctx)


HANDSHAKES = "mtls_handshakes_total"


def test_each_refusal_moves_its_reason_and_each_accept_moves_none(
    pki: Path, tmp_path: Path
) -> None:
    with observed(pki, tmp_path) as server:
        before = value(server, HANDSHAKES, outcome="accepted", reason="none")
        for _ in range(6):  # over both workers: the counts are summed across processes
            get(server, client_context(pki, "homepage"))
        wait_for(server, HANDSHAKES, before + 6, outcome="accepted", reason="none")
        refused(server, client_context(pki, None))
        wait_for(server, HANDSHAKES, 1, outcome="refused", reason="no_cert")
        refused(server, client_context(pki, "eventservice"))
        wait_for(server, HANDSHAKES, 1, outcome="refused", reason="revoked")
        refused(server, client_context(pki, "rogue"))
        wait_for(server, HANDSHAKES, 1, outcome="refused", reason="unknown_ca")
        with socket.create_connection((server.host, server.port)):
            pass  # a load balancer's TCP check: connect, close
        wait_for(server, HANDSHAKES, 1, outcome="refused", reason="probe")
        with socket.create_connection((server.host, server.port)) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert raw.recv(100) == b"", "plain HTTP gets no HTTP answer"
        wait_for(server, HANDSHAKES, 1, outcome="refused", reason="plaintext")
        # The probe is DEBUG: no line in the default (info) log; the others are there.
        log = server.log()
        assert "reason=probe" not in log
        assert "reason=revoked (client certificate revoked)" in log
        assert "reason=no_cert (no client certificate)" in log
        assert value(server, "mtls_handshake_duration_seconds_count") >= 6


def test_resumed_sessions_and_active_connections_are_counted(pki: Path, tmp_path: Path) -> None:
    ctx = client_context(pki, "homepage", maximum=ssl.TLSVersion.TLSv1_2)  # tickets at once
    with observed(pki, tmp_path) as server:
        _, session = get(server, ctx)
        for _ in range(4):
            get(server, ctx, session=session)
        wait_for(server, "mtls_sessions_resumed_total", 1)
        idle = []
        try:
            for _ in range(5):
                raw = socket.create_connection((server.host, server.port))
                idle.append(ctx.wrap_socket(raw, server_hostname="localhost"))
            wait_for(server, "mtls_connections_active", 5)
        finally:
            for tls in idle:
                tls.close()


def test_counts_survive_a_worker_killed_and_replaced(pki: Path, tmp_path: Path) -> None:
    with observed(pki, tmp_path) as server:
        for _ in range(8):
            get(server, client_context(pki, "homepage"))
        counted = wait_for(server, HANDSHAKES, 8, outcome="accepted", reason="none")
        pid = get(server, client_context(pki, "homepage"))[0]["worker_pid"]
        os.kill(int(pid), signal.SIGKILL)
        server.wait_for_log("Booting worker with pid", timeout=UNTIL)
        get(server, client_context(pki, "homepage"))
        assert wait_for(server, HANDSHAKES, counted + 1, outcome="accepted", reason="none")


def test_the_master_reports_the_certificate_the_crl_and_every_reload(
    pki: Path, tmp_path: Path
) -> None:
    leaf = x509.load_pem_x509_certificate((pki / "userservice.crt").read_bytes())
    with observed(pki, tmp_path) as server:
        found = samples(server)
        assert found[("mtls_server_cert_not_after_timestamp_seconds", ())] == pytest.approx(
            leaf.not_valid_after_utc.timestamp()
        )
        info = [k for k in found if k[0] == "mtls_server_cert_info"]
        assert info == [
            (
                "mtls_server_cert_info",
                (
                    ("serial", format_serial(leaf.serial_number)),
                    ("subject", "CN=userservice.internal,OU=Services,O=Example"),
                ),
            )
        ]
        assert ("mtls_crl_next_update_timestamp_seconds", ()) in found
        first = found[("mtls_reload_last_success_timestamp_seconds", ())]

        # A good reload (a new CRL, by rename) moves the last success...
        assert pki_cli.main(["crl", "--dir", str(pki)]) == 0
        server.wait_for_log("mTLS reloaded", timeout=UNTIL)
        assert value(server, "mtls_reload_last_success_timestamp_seconds") > first
        # ...a refused one moves the failures, says so in /healthz, and serves on.
        staged = tmp_path / "junk.pem"
        staged.write_text("-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n")
        staged.replace(pki / "crl.pem")
        wait_for(server, "mtls_reload_failures_total", 1)
        status, body = scrape(server, "/healthz")
        health = json.loads(body)
        assert (status, health["status"], health["reload"]["result"]) == (200, "warn", "refused")
        get(server, client_context(pki, "homepage"))


def test_healthz_says_ok_on_both_listeners_with_the_facts(pki: Path, tmp_path: Path) -> None:
    leaf = x509.load_pem_x509_certificate((pki / "userservice.crt").read_bytes())
    with observed(
        pki, tmp_path, app="wsgi:userservice", USERSERVICE_DATABASE_URL=f"sqlite:///{tmp_path}/u.db"
    ) as server:
        status, body = scrape(server, "/healthz")
        on_metrics_port = json.loads(body)
        assert (status, on_metrics_port["status"]) == (200, "ok")
        assert on_metrics_port["serial"] == format_serial(leaf.serial_number)
        assert on_metrics_port["not_after"].startswith(f"{leaf.not_valid_after_utc:%Y-%m-%d}")
        assert on_metrics_port["crl_next_update"] is not None
        assert on_metrics_port["reload"]["result"] == "ok"
        on_tls_port, _ = get(server, client_context(pki, "homepage"), "/healthz")
        assert on_tls_port["status"] == "ok"
        assert on_tls_port["database"] == "ok"
        assert on_tls_port["serial"] == on_metrics_port["serial"]

        # A policy denial (eventservice is trusted but not allowed on /users) moves
        # decision="deny"; the Home Page's certificate moves "allow".
        ctx = client_context(pki, "denied")
        with pytest.raises(AssertionError, match="403"):
            get(server, ctx, "/users/1")
        get(server, client_context(pki, "homepage"), "/users/1")
        deadline = time.monotonic() + UNTIL
        while time.monotonic() < deadline:
            decisions = {
                labels: v
                for (name, labels), v in samples(server).items()
                if name == "mtls_policy_decisions_total"
            }
            seen = {(dict(k)["decision"], dict(k)["mode"]) for k, v in decisions.items() if v}
            if {("deny", "enforce"), ("allow", "enforce")} <= seen:
                break
            time.sleep(0.1)
        assert {("deny", "enforce"), ("allow", "enforce")} <= seen, decisions


def test_healthz_fails_once_the_crl_is_stale(pki: Path, tmp_path: Path) -> None:
    """The CRL cliff: a warning before it, then 503 (the balancer takes the instance out)."""
    from cryptography.hazmat.primitives import serialization

    from pki import authority
    from tests.pkifiles import load_issued

    now = datetime.datetime.now(datetime.UTC)
    crl = authority.build_crl(
        load_issued(pki, "global"), [], now=now - datetime.timedelta(days=7, seconds=-3), number=9
    )
    (pki / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    with observed(pki, tmp_path) as server:
        status, body = scrape(server, "/healthz")
        assert (status, json.loads(body)["status"]) == (200, "warn")  # under 25 % of its lifetime
        server.wait_for_log("mTLS health warn: the CRL runs out in", timeout=UNTIL)
        deadline = time.monotonic() + UNTIL
        while scrape(server, "/healthz")[0] != 503 and time.monotonic() < deadline:
            time.sleep(0.2)
        status, body = scrape(server, "/healthz")
        assert (status, json.loads(body)["status"]) == (503, "fail")
        server.wait_for_log("mTLS health fail: the CRL is past its nextUpdate", timeout=UNTIL)


def test_reloads_while_prometheus_scrapes_leave_no_worker_stuck(pki: Path, tmp_path: Path) -> None:
    """A worker forked while the scrape thread first imported prometheus_client inherited
    that import's lock and hung in init_process until the graceful timeout (30 s), and
    the master's reload with it. Every reload here must replace its workers promptly."""
    import threading

    with observed(pki, tmp_path) as server:
        stop = threading.Event()

        def scrape_hard() -> None:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                scrape(server)

        scraper = threading.Thread(target=scrape_hard)
        scraper.start()
        try:
            for reload in range(1, 5):
                before = children(server.process.pid)
                os.kill(server.process.pid, signal.SIGHUP)
                deadline = time.monotonic() + 10  # a third of the graceful timeout
                while time.monotonic() < deadline:
                    now = children(server.process.pid)
                    if len(now) == 2 and not now & before:
                        break  # every old worker gone, two new ones serving
                    time.sleep(0.1)
                else:
                    raise AssertionError(
                        f"reload {reload}: workers {before} -> {now}:\n{server.log()}"
                    )
        finally:
            stop.set()
            scraper.join()


def test_a_worker_file_caught_mid_creation_gets_the_scrape_a_500_not_a_dropped_connection(
    pki: Path, tmp_path: Path
) -> None:
    """The flake of the test above: a new worker's file read between prometheus_client's
    open and its truncate (empty) raised in the handler, and the master cut the scrape
    (RemoteDisconnected). Here such a file stays empty, so every retry meets it."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    with observed(pki, tmp_path, TMPDIR=str(scratch)) as server:
        (directory,) = scratch.glob("mtls-metrics-*")  # the master's multiprocess directory
        empty = directory / "counter_999999.db"
        empty.touch()
        status, body = scrape(server)
        assert (status, json.loads(body)) == (
            500,
            {"message": "metrics collection failed; see the error log"},
        )
        server.wait_for_log("mTLS metrics: collecting the workers' files failed", timeout=UNTIL)
        empty.unlink()  # the worker got as far as sizing it: scrapes are whole again
        status, body = scrape(server)
        assert status == 200
        assert HANDSHAKES in body


def test_silent_sockets_on_the_metrics_port_cost_the_master_no_threads(
    pki: Path, tmp_path: Path
) -> None:
    """Hostile review: each stalled socket held a master thread for good."""
    with observed(pki, tmp_path) as server:
        master = server.process.pid
        before = len(os.listdir(f"/proc/{master}/task"))
        port = int(server.env["metrics_port"])
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
        try:
            for s in socks:
                s.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
            time.sleep(0.5)
            during = len(os.listdir(f"/proc/{master}/task"))
            assert during <= before + 8, (before, during)  # MAX_CONCURRENT
            # The stalled ones hold the slots until their 5 s timeout, then it answers.
            deadline, status = time.monotonic() + 15, 0
            while status != 200 and time.monotonic() < deadline:
                with contextlib.suppress(OSError, http.client.HTTPException):
                    status, _ = scrape(server, "/healthz")
                time.sleep(0.2)
            assert status == 200
        finally:
            for s in socks:
                s.close()


def children(pid: int) -> set[int]:
    """The live (not zombie) processes whose parent is ``pid``, from /proc."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.add(int(entry))
    return found
