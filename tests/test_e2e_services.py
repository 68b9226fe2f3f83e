"""Both services under real gunicorn, driven the way users drive them: curl and a browser.

The curl checks are demo.seed_checks, the same ones `make check-demo` runs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo import print_checks, run_check, seed_checks
from devserver import runner
from devserver.runner import Probe
from devserver.services import homepage_probe, service_envs, userservice_probe
from tests.servers import Server, client_context, free_port, running
from tests.tls_stub import silent_port
from tests.tools import require_tool

FORBIDDEN = {"message": "Certificate subject is not recognized!"}


@pytest.fixture(scope="module")
def services(
    demo_pki: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Server]]:
    tmp = tmp_path_factory.mktemp("services")
    user_port = free_port()
    user_env, home_env = service_envs(demo_pki, f"https://localhost:{user_port}")
    user_env["USERSERVICE_DATABASE_URL"] = f"sqlite:///{tmp / 'users.db'}"
    with (
        running(
            "wsgi:userservice",
            user_env,
            tmp / "user.log",
            client_context(demo_pki, "homepage"),
            port=user_port,
        ) as user,
        running(
            "wsgi:homepage", home_env, tmp / "home.log", client_context(demo_pki, None)
        ) as home,
    ):
        yield user, home


def curl(*args: str) -> tuple[int, str, str]:
    require_tool("curl")
    proc = subprocess.run(
        ["curl", "-sS", "--max-time", "15", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    body, _, status = proc.stdout.rpartition("\n")
    return proc.returncode, status, body


def as_client(pki: Path, name: str) -> tuple[str, ...]:
    return (
        "--cacert",
        str(pki / "root.crt"),
        "--cert",
        str(pki / f"{name}-chain.crt"),
        "--key",
        str(pki / f"{name}.key"),
    )


def test_the_seeds_curl_checks_give_their_expected_answers(
    services: tuple[Server, Server], demo_pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_tool("curl")
    user, _ = services
    results = [run_check(c) for c in seed_checks(demo_pki, base=f"localhost:{user.port}")]
    ok = print_checks(results)
    assert ok, capsys.readouterr().out
    assert [r.check.title for r in results if r.passed] == [c.title for c in seed_checks(demo_pki)]


def test_homepage_certificate_reads_a_user_as_json(
    services: tuple[Server, Server], demo_pki: Path
) -> None:
    user, _ = services
    code, status, body = curl(
        *as_client(demo_pki, "homepage"), f"https://localhost:{user.port}/users/1"
    )
    assert (code, status) == (0, "200")
    assert set(json.loads(body)) == {"id", "name", "email", "phone"}


def test_eventservice_is_denied_everywhere_under_users_even_on_unknown_paths(
    services: tuple[Server, Server], demo_pki: Path
) -> None:
    user, _ = services
    for path, method in (("/users", "GET"), ("/users/1", "DELETE"), ("/users/nope/x", "GET")):
        code, status, body = curl(
            *as_client(demo_pki, "eventservice"),
            "-X",
            method,
            f"https://localhost:{user.port}{path}",
        )
        assert (code, status, json.loads(body)) == (0, "403", FORBIDDEN), path


def test_whoami_shows_any_verified_caller_what_the_server_sees(
    services: tuple[Server, Server], demo_pki: Path
) -> None:
    user, _ = services
    code, status, body = curl(
        *as_client(demo_pki, "eventservice"), f"https://localhost:{user.port}/whoami"
    )
    assert (code, status) == (0, "200")
    me = json.loads(body)
    assert me["subject_dn"] == "CN=eventservice.internal,OU=Services,O=Example"
    assert me["issuer_dn"] == "CN=Example Global CA,O=Example"
    assert me["remote_addr"] == "127.0.0.1"
    assert me["protocol"] == "TLSv1.3"
    assert me["san_dns"] == ["eventservice.internal"]


def test_deeply_nested_json_is_a_json_400_through_gunicorn(
    services: tuple[Server, Server], demo_pki: Path
) -> None:
    user, _ = services
    code, status, body = curl(
        *as_client(demo_pki, "homepage"),
        *("-H", "Content-Type: application/json", "--data-binary", "[" * 5000),
        f"https://localhost:{user.port}/users",
    )
    assert (code, status) == (0, "400")
    assert json.loads(body) == {
        "message": "Invalid input.",
        "errors": {"_schema": ["Malformed JSON: nested too deeply."]},
    }
    assert "RecursionError" not in user.log()


def test_user_service_access_log_names_the_caller(
    services: tuple[Server, Server], demo_pki: Path
) -> None:
    user, _ = services
    curl(*as_client(demo_pki, "homepage"), f"https://localhost:{user.port}/users/2")
    log = user.wait_for_log('"GET /users/2 HTTP/1.1" 200')
    assert re.search(
        r'"GET /users/2 HTTP/1.1" 200 .* dn="CN=homepage\.internal,OU=Services,O=Example"', log
    )


def test_home_page_shows_the_user_fetched_over_mtls(
    services: tuple[Server, Server], demo_pki: Path
) -> None:
    _, home = services
    code, status, body = curl(
        "--cacert", str(demo_pki / "root.crt"), f"https://localhost:{home.port}/"
    )
    assert (code, status) == (0, "200")
    assert re.search(r'id="user-name"[^>]*>\s*Ada Lovelace', body)
    assert "CN=userservice.internal,OU=Services,O=Example" in body
    assert "CN=homepage.internal,OU=Services,O=Example" in body


def test_home_page_internal_status_needs_the_ops_certificate(
    services: tuple[Server, Server], demo_pki: Path
) -> None:
    _, home = services
    url = f"https://localhost:{home.port}/internal/status"
    code, status, body = curl("--cacert", str(demo_pki / "root.crt"), url)
    assert (code, status, json.loads(body)) == (
        0,
        "403",
        {"message": "No certificate chain found!"},
    )
    code, status, body = curl(*as_client(demo_pki, "eventservice"), url)
    assert (code, status, json.loads(body)) == (0, "403", FORBIDDEN)
    code, status, body = curl(*as_client(demo_pki, "ops"), url)
    assert (code, status) == (0, "200")


def sleeper(seconds: float) -> subprocess.Popen[bytes]:
    """A stand-in for a supervised gunicorn that exits on its own after ``seconds``."""
    return subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])


def demo_probes(pki: Path, user: Server, home: Server) -> list[Probe]:
    """The probes demo.run_demo uses, pointed at these ports."""
    return [
        userservice_probe(pki, "the User Service", ("127.0.0.1", user.port)),
        homepage_probe(pki, home.port),
    ]


def test_the_demo_probe_is_a_healthz_request_over_mutual_tls(
    services: tuple[Server, Server], demo_pki: Path
) -> None:
    user, _ = services
    address = ("127.0.0.1", user.port)
    runner.wait_until_answering(Probe("us", address, client_context(demo_pki, "homepage")), [])
    # The same server without our client certificate never answers the probe.
    anonymous = Probe("the User Service", address, client_context(demo_pki, None))
    with pytest.raises(RuntimeError, match=r"the User Service \(127\.0\.0\.1:\d+\) did not answer"):
        runner.wait_until_answering(anonymous, [], timeout=1)


def test_the_demo_banner_comes_once_both_services_answer(
    services: tuple[Server, Server], demo_pki: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    user, home = services
    service = sleeper(3)  # "exits" after the banner: the supervisor then stops all

    assert runner.supervise([service], "BANNER", demo_probes(demo_pki, user, home)) == 1

    out, err = capfd.readouterr()
    assert out.splitlines()[-2:] == ["BANNER", "demo: stopped"]
    assert "demo: a service exited (see its log above); stopping all" in err


def test_the_demo_stops_everything_when_a_service_never_answers(
    services: tuple[Server, Server], demo_pki: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    user, _ = services
    service = sleeper(60)
    with silent_port() as port:  # accepts TCP, never speaks TLS: a hung service
        probes = [
            *demo_probes(demo_pki, user, user)[:1],
            Probe("the Home Page", ("127.0.0.1", port), client_context(demo_pki, None), None),
        ]
        started = time.monotonic()
        assert runner.supervise([service], "BANNER", probes, timeout=1) == 1

    assert time.monotonic() - started < 10
    assert service.poll() is not None  # stopped, not left running
    out, err = capfd.readouterr()
    assert "BANNER" not in out
    assert re.search(
        r"demo: the Home Page \(127\.0\.0\.1:\d+\) did not answer within 1 s: .*; stopping all",
        err,
    )


def test_the_demo_stops_everything_when_a_service_exits_before_answering(
    demo_pki: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    dead, alive = sleeper(0), sleeper(60)
    dead.wait()
    with silent_port() as port:
        probe = Probe("the User Service", ("127.0.0.1", port), client_context(demo_pki, None))
        assert runner.supervise([dead, alive], "BANNER", [probe]) == 1

    assert alive.poll() is not None
    assert "a process exited while waiting for the User Service" in capfd.readouterr().err


def test_home_page_says_503_once_the_user_service_is_stopped(
    demo_pki: Path, tmp_path: Path
) -> None:
    user_port = free_port()
    user_env, home_env = service_envs(demo_pki, f"https://localhost:{user_port}")
    user_env["USERSERVICE_DATABASE_URL"] = f"sqlite:///{tmp_path / 'users.db'}"
    root = ("--cacert", str(demo_pki / "root.crt"))
    with running(
        "wsgi:homepage", home_env, tmp_path / "home.log", client_context(demo_pki, None)
    ) as home:
        with running(
            "wsgi:userservice", user_env, tmp_path / "user.log",
            client_context(demo_pki, "homepage"), port=user_port,
        ):  # fmt: skip
            assert curl(*root, f"https://localhost:{home.port}/")[:2] == (0, "200")
        code, status, body = curl(*root, f"https://localhost:{home.port}/")
        log = home.wait_for_log("failed: The User Service is not reachable at")
    assert (code, status) == (0, "503")
    assert "not reachable" in body
    assert "Traceback" not in body + log


def test_home_page_says_502_when_the_user_service_refuses_its_certificate(
    demo_pki: Path, tmp_path: Path
) -> None:
    user_port = free_port()
    user_env, home_env = service_envs(demo_pki, f"https://localhost:{user_port}")
    user_env["USERSERVICE_DATABASE_URL"] = f"sqlite:///{tmp_path / 'users.db'}"
    # The Home Page presents the eventservice identity, which the policy denies.
    home_env["HOMEPAGE_CLIENT_CERT"] = str(demo_pki / "eventservice-chain.crt")
    home_env["HOMEPAGE_CLIENT_KEY"] = str(demo_pki / "eventservice.key")
    with (
        running(
            "wsgi:userservice",
            user_env,
            tmp_path / "user.log",
            client_context(demo_pki, "homepage"),
            port=user_port,
        ),
        running(
            "wsgi:homepage", home_env, tmp_path / "home.log", client_context(demo_pki, None)
        ) as home,
    ):
        code, status, body = curl(
            "--cacert", str(demo_pki / "root.crt"), f"https://localhost:{home.port}/"
        )
    assert (code, status) == (0, "502")
    assert "Certificate subject is not recognized!" in body


def chromium(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium as root on a closed network (flags: see the env notes)."""
    return subprocess.run(
        [
            require_tool("chromium"),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={home / 'profile'}",
            *args,
        ],
        env={**os.environ, "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_a_real_browser_that_trusts_our_root_sees_the_user(
    services: tuple[Server, Server], demo_pki: Path, tmp_path: Path
) -> None:
    _, home = services
    url = f"https://localhost:{home.port}/"
    # Without our root, Chromium refuses the page: the trust below is what makes it work.
    # Proven positively, so that a crashed or missing browser cannot pass for a refusal:
    # headless Chromium (156) dumps no DOM and logs the load failure with the net error.
    untrusted = chromium(tmp_path / "untrusted", "--dump-dom", url)
    assert "Page load failed: net::ERR_CERT_AUTHORITY_INVALID" in untrusted.stderr, (
        f"exit {untrusted.returncode}: {untrusted.stderr[-2000:]}"
    )
    assert "Ada Lovelace" not in untrusted.stdout
    # Trust the root through the NSS database Chromium reads on Linux, as a user would.
    require_tool("certutil")
    nssdb = tmp_path / "trusted" / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True)
    subprocess.run(
        [
            "certutil",
            "-d",
            f"sql:{nssdb}",
            "-A",
            "-t",
            "C,,",
            "-n",
            "internal-mtls demo root",
            "-i",
            str(demo_pki / "root.crt"),
        ],
        check=True,
    )
    page = chromium(tmp_path / "trusted", "--dump-dom", url)
    assert re.search(r'id="user-name"[^>]*>\s*Ada Lovelace', page.stdout), page.stderr[-2000:]
    assert re.search(r'id="user-email"[^>]*>\s*ada@example\.com', page.stdout)
    assert 'id="tls-panel"' in page.stdout
    shot = tmp_path / "homepage.png"
    chromium(tmp_path / "trusted", f"--screenshot={shot}", "--window-size=1100,900", url)
    assert shot.stat().st_size > 10_000
