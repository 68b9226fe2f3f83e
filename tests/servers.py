"""Real gunicorn servers for the end-to-end tests.

Each server is a subprocess on a free loopback port, started with the
project's own gunicorn_conf.py; readiness is a completed TLS handshake polled
against a deadline (never a bare sleep), and its log is kept for assertions.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def server_env(pki: Path, name: str, **extra: str) -> dict[str, str]:
    """MTLS_* for a server presenting pki/NAME-chain.crt, trusting pki/root.crt."""
    env = {
        "MTLS_CERTFILE": str(pki / f"{name}-chain.crt"),
        "MTLS_KEYFILE": str(pki / f"{name}.key"),
        "MTLS_CA_CERTS": str(pki / "root.crt"),
    }
    env.update(extra)
    return env


def client_context(
    pki: Path, name: str | None, *, root: str = "root.crt", maximum: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / root))
    if name is not None:
        ctx.load_cert_chain(str(pki / f"{name}-chain.crt"), str(pki / f"{name}.key"))
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


@dataclass
class Server:
    host: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if needle in text:
                return text
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not in the server log within {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def gunicorn_command(app: str, bind: str, *args: str, config: Path | None = None) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(config or ROOT / "gunicorn_conf.py"),
        "--bind",
        bind,
        "--pythonpath",
        f"{ROOT},{TESTS}",
        *args,
        app,
    ]


def start_gunicorn(
    app: str,
    env: Mapping[str, str],
    log_path: Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    args: tuple[str, ...] = (),
    config: Path | None = None,
) -> Server:
    port = port or free_port(host)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("MTLS_", "GUNICORN"))}
    full_env.update(env)
    full_env.setdefault("GUNICORN_CMD_ARGS", "--workers 2 --threads 4")
    log = log_path.open("wb")
    process = subprocess.Popen(
        gunicorn_command(app, f"{host}:{port}", *args, config=config),
        env=full_env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return Server(host, port, process, log_path, dict(env))


def wait_until_ready(server: Server, ctx: ssl.SSLContext, timeout: float = 20.0) -> None:
    """Ready = a full TLS handshake with the given client context succeeds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(
                f"gunicorn exited with {server.process.returncode}:\n{server.log()}"
            )
        try:
            with socket.create_connection((server.host, server.port), timeout=2) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(
                        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                    )
                    if tls.recv(12).startswith(b"HTTP/1.1"):
                        return
        except (OSError, ssl.SSLError) as e:
            last = e
        time.sleep(0.05)
    raise AssertionError(f"server not ready within {timeout}s ({last}):\n{server.log()}")


@contextlib.contextmanager
def running(
    app: str,
    env: Mapping[str, str],
    log_path: Path,
    ready_ctx: ssl.SSLContext,
    **kwargs: object,
) -> Iterator[Server]:
    """A ready server, stopped on exit.

    free_port() can race with another process between probing and gunicorn's
    bind; when the port was taken meanwhile (and the caller did not ask for a
    fixed one), start again on a fresh port, a bounded number of times.
    """
    for attempt in range(3):
        server = start_gunicorn(app, env, log_path, **kwargs)  # type: ignore[arg-type]
        try:
            wait_until_ready(server, ready_ctx)
        except AssertionError:
            server.stop()
            lost_race = "Connection in use" in server.log() and "port" not in kwargs
            if lost_race and attempt < 2:
                continue
            raise
        try:
            yield server
        finally:
            server.stop()
        return
