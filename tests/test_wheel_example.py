"""The five-minute path as a new user walks it: the wheel in a fresh venv, examples/orders.py.

One venv per test session (building the wheel and installing it with its
dependencies takes most of this module's time). Nothing of the checkout is
on the path: the venv holds only the wheel and its dependencies, the
servers run from a directory outside the checkout, with no PYTHONPATH and
only ``-c python:mtls.gunicorn_conf`` (plus ``--bind``).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import Server, client_context, free_port, wait_until_ready

ROOT = Path(__file__).resolve().parent.parent
ALLOWED_URI = "spiffe://example.org/ns/prod/sa/billing"
OTHER_URI = "spiffe://example.org/ns/prod/sa/reports"
NOT_RECOGNIZED_BODY = b'{"message": "Certificate subject is not recognized!"}'
# Everything a build must not see: caches, the venv, earlier build output.
_NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
    "var", "out",
)  # fmt: skip


@dataclass(frozen=True)
class Installed:
    wheel: Path
    bin: Path  # the venv's bin/
    home: Path  # the user's project directory: orders.py and ca/

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment: the venv first on PATH, the example's TLS files, nothing else."""
        env = {"PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}", "LANG": "C.UTF-8"}
        env["HOME"] = str(self.home)
        env.update(
            MTLS_CERTFILE="ca/orders-chain.crt",
            MTLS_KEYFILE="ca/orders.key",
            MTLS_CA_CERTS="ca/root.crt",
        )
        env.update(extra)
        return env

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args),
            cwd=self.home,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _checked(args: list[str], cwd: Path, timeout: float = 300) -> None:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCES)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    _checked([*pip, "wheel", "--no-deps", "--wheel-dir", str(base / "dist"), str(source)], base)
    [wheel] = (base / "dist").glob("internal_mtls-*.whl")
    venv = base / "venv"
    _checked([sys.executable, "-m", "venv", "--without-pip", str(venv)], base)
    _checked([*pip, "--python", str(venv / "bin" / "python"), "install", str(wheel)], base)
    home = base / "home"
    home.mkdir()
    shutil.copy(ROOT / "examples" / "orders.py", home / "orders.py")
    result = Installed(wheel, venv / "bin", home)
    for args in (
        ["pki", "init", "--dir", "ca"],
        [
            "pki",
            "issue",
            "orders",
            "--dir",
            "ca",
            "--server",
            "--dns",
            "localhost",
            "--ip",
            "127.0.0.1",
        ],
        ["pki", "issue", "billing", "--dir", "ca", "--client", "--uri", ALLOWED_URI],
        ["pki", "issue", "reports", "--dir", "ca", "--client", "--uri", OTHER_URI],
    ):
        done = result.run(*args)
        assert done.returncode == 0, done.stderr
    return result


def start(installed: Installed, tmp_path: Path, *args: str, **env: str) -> Server:
    """The example under gunicorn, as the README starts it; ready once a handshake answers."""
    port = free_port()
    log_path = tmp_path / f"gunicorn-{port}.log"
    command = [str(installed.bin / "gunicorn"), *args, "--bind", f"127.0.0.1:{port}", "orders:app"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=installed.home,
            env=installed.env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server("127.0.0.1", port, process, log_path)
    try:
        wait_until_ready(server, client_context(installed.home / "ca", "billing"))
    except BaseException:
        server.stop()
        raise
    return server


PACKAGED = ("-c", "python:mtls.gunicorn_conf")


@pytest.fixture(scope="module")
def orders(installed: Installed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start(installed, tmp_path_factory.mktemp("orders"), *PACKAGED)
    yield server
    server.stop()


def get(server: Server, ctx: ssl.SSLContext, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection(server.host, server.port, context=ctx, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_the_wheel_holds_mtls_and_pki_with_py_typed_and_no_demo_package(
    installed: Installed,
) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"mtls", "pki"}
    assert {"mtls/py.typed", "pki/py.typed", "mtls/gunicorn_conf.py", "mtls/flask.py"} <= set(names)
    metadata = zipfile.ZipFile(installed.wheel).read("internal_mtls-0.1.0.dist-info/METADATA")
    assert b'Requires-Dist: marshmallow<5,>=4.0; extra == "demo"' in metadata


def test_the_venv_sees_the_installed_library_and_nothing_of_the_checkout(
    installed: Installed,
) -> None:
    probe = (
        "import importlib.util, mtls, pki; print(mtls.__file__); print(pki.__file__); "
        "print([m for m in ('userservice', 'homepage', 'marshmallow') "
        "if importlib.util.find_spec(m)])"
    )
    mtls_file, pki_file, demo = installed.run(
        str(installed.bin / "python"), "-c", probe
    ).stdout.split("\n")[:3]
    site = installed.bin.parent / "lib"
    assert Path(mtls_file).is_relative_to(site)
    assert Path(pki_file).is_relative_to(site)
    assert demo == "[]"


def test_the_allowed_spiffe_id_gets_its_orders_over_https(
    orders: Server, installed: Installed
) -> None:
    status, body = get(orders, client_context(installed.home / "ca", "billing"), "/api/orders")
    assert status == 200
    answer = json.loads(body)
    assert answer["caller"] == [ALLOWED_URI]
    assert answer["secure"] is True  # request.is_secure
    assert answer["self"] == f"https://127.0.0.1:{orders.port}/api/orders"  # url_for(_external)


def test_another_spiffe_id_gets_the_fixed_403(orders: Server, installed: Installed) -> None:
    status, body = get(orders, client_context(installed.home / "ca", "reports"), "/api/orders")
    assert (status, body) == (403, NOT_RECOGNIZED_BODY)
    orders.wait_for_log(f"san_uri: URIs ['{OTHER_URI}'] match none of")


def test_no_certificate_is_refused_at_the_handshake(orders: Server, installed: Installed) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        get(orders, client_context(installed.home / "ca", None), "/healthz")
    orders.wait_for_log("reason=no_cert (no client certificate)")


def test_the_apps_own_logger_reaches_gunicorns_log(orders: Server, installed: Installed) -> None:
    get(orders, client_context(installed.home / "ca", "billing"), "/api/orders")
    orders.wait_for_log(f"[INFO] orders listed for ['{ALLOWED_URI}']")


def test_report_mode_serves_and_logs_the_would_be_denial(
    installed: Installed, tmp_path: Path
) -> None:
    server = start(installed, tmp_path, *PACKAGED, ORDERS_POLICY_MODE="report")
    try:
        status, _ = get(server, client_context(installed.home / "ca", "reports"), "/api/orders")
        assert status == 200
        log = server.wait_for_log("[WARNING] report mode, served what enforce would deny")
        assert f"san_uri: URIs ['{OTHER_URI}']" in log
    finally:
        server.stop()


def test_an_unpoliced_endpoint_stops_start_up_naming_it(installed: Installed) -> None:
    forgetful = installed.home / "forgetful.py"
    forgetful.write_text(
        "import flask\n"
        "from mtls.flask import Mtls\n"
        "app = flask.Flask(__name__)\n"
        "app.add_url_rule('/export', 'export', lambda: 'every order, to anyone')\n"
        "Mtls(app)\n"
    )
    port = str(free_port())
    result = installed.run(
        str(installed.bin / "gunicorn"), *PACKAGED, "--bind", f"127.0.0.1:{port}", "forgetful:app"
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "route '/export' (endpoint 'export') is neither policed nor public" in output


def test_the_worker_alone_stops_with_the_exact_command(installed: Installed) -> None:
    port = str(free_port())
    result = installed.run(
        str(installed.bin / "gunicorn"),
        "-k",
        "mtls.worker.MtlsWorker",
        "--no-control-socket",  # not to touch a control socket another server shares
        "--bind",
        f"127.0.0.1:{port}",
        "orders:app",
    )
    assert result.returncode != 0
    assert "`gunicorn -c python:mtls.gunicorn_conf yourapp:app`" in result.stdout + result.stderr
