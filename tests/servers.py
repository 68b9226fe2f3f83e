"""Real gunicorn servers for the end-to-end tests: devserver.runner with the tests' defaults.

Starting, readiness (a TLS handshake and an HTTP answer polled against a
deadline, never a bare sleep) and stopping are devserver.runner's, shared
with the demos and bench/. What the tests add: a clean environment (only the
MTLS_* settings a test names, never the caller's), tests/ on gunicorn's
python path (echo_app), two workers with four threads unless a test says
otherwise, and AssertionError (with the server's log) when a server never
answers.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator, Mapping
from pathlib import Path

from devserver import runner
from devserver.runner import ROOT, Server, client_context, free_port

TESTS = Path(__file__).resolve().parent
ECHO = "echo_app:app"  # tests/echo_app.py: answers with what the worker put in the environ
READY_TIMEOUT = 20.0

__all__ = [
    "ECHO",
    "ROOT",
    "TESTS",
    "Server",
    "client_context",
    "free_port",
    "gunicorn_command",
    "running",
    "server_env",
    "start_gunicorn",
    "wait_until_ready",
    "worker_pids",
]


def server_env(pki: Path, name: str, **extra: str) -> dict[str, str]:
    """MTLS_* for a server presenting pki/NAME-chain.crt, trusting pki/root.crt."""
    env = {
        "MTLS_CERTFILE": str(pki / f"{name}-chain.crt"),
        "MTLS_KEYFILE": str(pki / f"{name}.key"),
        "MTLS_CA_CERTS": str(pki / "root.crt"),
    }
    env.update(extra)
    return env


def gunicorn_command(app: str, bind: str, *args: str, config: Path | None = None) -> list[str]:
    """devserver.runner.gunicorn_command, able to import apps from tests/ too."""
    return runner.gunicorn_command(app, bind, *args, config=config, pythonpath=(ROOT, TESTS))


def isolated_env(env: Mapping[str, str]) -> dict[str, str]:
    """Our environment without MTLS_*/GUNICORN*, then ``env``; 2 workers x 4 threads by default."""
    full = runner.environment(env, clean=True)
    full.setdefault("GUNICORN_CMD_ARGS", "--workers 2 --threads 4")
    return full


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
    """A started (not yet ready) server; its ``env`` is what the test passed, not all of it."""
    server = runner.start_server(
        app,
        isolated_env(env),
        log_path,
        host=host,
        port=port,
        args=args,
        config=config,
        pythonpath=(ROOT, TESTS),
    )
    server.env = dict(env)
    return server


def wait_until_ready(server: Server, ctx: ssl.SSLContext, timeout: float = READY_TIMEOUT) -> None:
    """Ready = a full TLS handshake with ``ctx`` and any HTTP answer to GET /healthz."""
    try:
        server.wait_until_ready(ctx, timeout=timeout)
    except runner.NotAnswering as exc:
        raise AssertionError(str(exc)) from None


@contextlib.contextmanager
def running(
    app: str,
    env: Mapping[str, str],
    log_path: Path,
    ready_ctx: ssl.SSLContext,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    args: tuple[str, ...] = (),
    config: Path | None = None,
) -> Iterator[Server]:
    """A ready server, stopped on exit (a lost free_port race is retried on a fresh port)."""
    try:
        with runner.running(
            app,
            isolated_env(env),
            log_path,
            ready_ctx,
            host=host,
            port=port,
            args=args,
            config=config,
            pythonpath=(ROOT, TESTS),
            ready_timeout=READY_TIMEOUT,
        ) as server:
            server.env = dict(env)
            yield server
    except runner.NotAnswering as exc:
        raise AssertionError(str(exc)) from None


def worker_pids(master: int) -> set[int]:
    """The live children of ``master`` (gunicorn's workers), from /proc/PID/stat (proc(5)).

    Zombies (a killed worker the arbiter has not reaped yet) are left out.
    """
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == master and state != "Z":
            found.add(int(entry.name))
    return found
