"""Start gunicorn with this project's config, wait until it really answers, stop it.

The one runner that demo.py, deploy/lb_demo.py, tests/servers.py and bench/
share. It lives here and not in the `mtls` package on purpose: `mtls` is
the runtime library applications install, and this module runs *this
checkout's* gunicorn_conf.py and wsgi.py from the repository root, which an
installed application does not have. (An application testing its own
service would write the same three steps against its own config; the ideas
are below, the paths are ours.)

- Start: ``python -m gunicorn -c gunicorn_conf.py --bind HOST:PORT APP`` in
  the repository root, with an explicit environment and, for tests, a log
  file that the parent closes as soon as the child holds it.
- Ready: a completed TLS handshake and an HTTP answer, polled against a
  deadline. A bare TCP connect would not prove that the worker serves TLS
  (and each such probe is logged as a refused handshake); a sleep is too
  short on a loaded machine and wasted on a fast one.
- Stop: SIGTERM (gunicorn's graceful shutdown), SIGKILL for whatever is still
  running after STOP_GRACE seconds, then a bounded wait for the exit.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "gunicorn_conf.py"
READY_TIMEOUT = 30.0
STOP_GRACE = 15.0
KILL_WAIT = 5.0
POLL_INTERVAL = 0.05
# Variables that configure our worker or gunicorn itself: a server started
# with a clean environment gets only the ones its caller names.
SETTING_PREFIXES = ("MTLS_", "GUNICORN")

Process = subprocess.Popen[bytes]


class NotAnswering(RuntimeError):
    """A server did not answer its readiness probe: it exited, or the deadline passed."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just had free on ``host`` (another process may take it before we bind)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def client_context(
    pki: Path, name: str | None, *, root: str = "root.crt", maximum: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    """Trusting pki/ROOT only; presenting pki/NAME-chain.crt and pki/NAME.key unless None."""
    ctx = ssl.create_default_context(cafile=str(pki / root))
    if name is not None:
        ctx.load_cert_chain(str(pki / f"{name}-chain.crt"), str(pki / f"{name}.key"))
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


def gunicorn_command(
    app: str,
    bind: str,
    *args: str,
    config: Path | None = None,
    pythonpath: Sequence[Path] = (),
) -> list[str]:
    """gunicorn for ``app`` ("module:object") on ``bind`` with our config (or ``config``).

    ``args`` come after the config file, so they override it; ``pythonpath``
    adds directories apps are imported from (the tests' echo app).
    """
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(config or CONFIG), "--bind", bind]
    if pythonpath:
        cmd += ["--pythonpath", ",".join(str(p) for p in pythonpath)]
    return [*cmd, *args, app]


def environment(overrides: Mapping[str, str], *, clean: bool) -> dict[str, str]:
    """This process's environment plus ``overrides``.

    clean: drop our own MTLS_* and GUNICORN* variables first, so a server sees
    exactly the settings its caller gave (what tests want); the demos keep
    the user's, so e.g. GUNICORN_CMD_ARGS=--workers=4 still applies.
    """
    env = {k: v for k, v in os.environ.items() if not (clean and k.startswith(SETTING_PREFIXES))}
    env.update(overrides)
    return env


def start_process(
    command: Sequence[str],
    env: Mapping[str, str],
    *,
    log_path: Path | None = None,
    new_session: bool = False,
) -> Process:
    """Run ``command`` in the repository root with exactly ``env``.

    Output goes to ``log_path`` (stdout and stderr interleaved, as a terminal
    would show them) or, without one, to ours. The parent's handle on the log
    is closed as soon as the child has its own copy, so nothing is left for
    the caller to close. new_session: the child gets its own process group,
    so a Ctrl-C in our terminal reaches only us (and we stop it gracefully),
    or a test can kill the group at once.
    """
    if log_path is None:
        return subprocess.Popen(command, cwd=ROOT, env=dict(env), start_new_session=new_session)
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )


@dataclass(frozen=True)
class Probe:
    """How to tell that one server answers.

    path: GET it over TLS and expect the answer to start with ``expect``;
    None: a completed handshake is the answer (the Home Page's ``/`` would
    itself call the User Service, which may not be up yet).
    """

    name: str
    address: tuple[str, int]
    context: ssl.SSLContext
    path: str | None = "/healthz"
    expect: bytes = b"HTTP/1.1 200"

    def problem(self, *, timeout: float) -> str | None:
        """None when the server answers as expected now; otherwise what it did instead."""
        try:
            with socket.create_connection(self.address, timeout=timeout) as raw:
                with self.context.wrap_socket(raw, server_hostname="localhost") as tls:
                    if self.path is None:
                        return None
                    request = (
                        f"GET {self.path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                    )
                    tls.sendall(request.encode())
                    head = tls.recv(len(self.expect))
        except OSError as exc:  # ssl.SSLError included
            return str(exc) or type(exc).__name__
        if head.startswith(self.expect):
            return None
        return f"GET {self.path} answered {head!r}, not {self.expect!r}"


def wait_until_answering(
    probe: Probe,
    procs: Sequence[Process],
    *,
    timeout: float = READY_TIMEOUT,
    stopped: Callable[[], bool] = lambda: False,
) -> None:
    """Poll ``probe`` until it answers; NotAnswering when one of ``procs`` exits or time runs out.

    Returns early (without an answer) once ``stopped()`` says so: Ctrl-C
    while a demo waits.
    """
    host, port = probe.address
    deadline = time.monotonic() + timeout
    problem = "no answer yet"
    while not stopped():
        exited = [p for p in procs if p.poll() is not None]
        if exited:
            codes = ", ".join(f"pid {p.pid} exit {p.returncode}" for p in exited)
            raise NotAnswering(
                f"a process exited while waiting for {probe.name} ({host}:{port}): {codes}"
            )
        left = deadline - time.monotonic()
        if left <= 0:
            raise NotAnswering(
                f"{probe.name} ({host}:{port}) did not answer within {timeout:g} s: {problem}"
            )
        found = probe.problem(timeout=min(2.0, left))
        if found is None:
            return
        problem = found
        time.sleep(POLL_INTERVAL)


def stop_all(procs: Sequence[Process], *, grace: float = STOP_GRACE) -> None:
    """SIGTERM to every live process, SIGKILL to those still running ``grace`` s later.

    All are signalled first and share one deadline, so stopping N servers
    takes ``grace`` at most, not N times it.
    """
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=KILL_WAIT)


@dataclass
class Server:
    """A started server process, where it listens, and the file its output goes to."""

    host: str
    port: int
    process: Process
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout: float = 10.0, *, count: int = 1) -> str:
        """The log once it holds ``needle`` ``count`` times (polled); AssertionError if never."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if text.count(needle) >= count:
                return text
            time.sleep(POLL_INTERVAL)
        raise AssertionError(f"{needle!r} not in the server log within {timeout}s:\n{self.log()}")

    def wait_until_ready(
        self, ctx: ssl.SSLContext, *, timeout: float = READY_TIMEOUT, expect: bytes = b"HTTP/1.1"
    ) -> None:
        """Ready = a handshake with ``ctx`` and an HTTP answer to GET /healthz.

        Any status counts by default: the tests' echo app has no /healthz and
        answers 404, which still proves TLS and the app are up. NotAnswering
        carries the server's log.
        """
        probe = Probe(f"{self.log_path.name} server", (self.host, self.port), ctx, expect=expect)
        try:
            wait_until_answering(probe, [self.process], timeout=timeout)
        except NotAnswering as exc:
            raise NotAnswering(f"{exc}; its log:\n{self.log()}") from None

    def stop(self) -> None:
        stop_all([self.process])


def start_server(
    app: str,
    env: Mapping[str, str],
    log_path: Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    args: Sequence[str] = (),
    config: Path | None = None,
    pythonpath: Sequence[Path] = (),
    new_session: bool = False,
) -> Server:
    """gunicorn for ``app`` on host:port (a free one by default) with exactly ``env``."""
    port = port or free_port(host)
    command = gunicorn_command(app, f"{host}:{port}", *args, config=config, pythonpath=pythonpath)
    process = start_process(command, env, log_path=log_path, new_session=new_session)
    return Server(host, port, process, log_path, dict(env))


@contextlib.contextmanager
def running(
    app: str,
    env: Mapping[str, str],
    log_path: Path,
    ready_ctx: ssl.SSLContext,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    args: Sequence[str] = (),
    config: Path | None = None,
    pythonpath: Sequence[Path] = (),
    new_session: bool = False,
    ready_timeout: float = READY_TIMEOUT,
    attempts: int = 3,
) -> Iterator[Server]:
    """A ready server (start_server's arguments), stopped on exit.

    free_port() can race with another process between probing and gunicorn's
    bind; when the port was taken meanwhile (and the caller did not ask for a
    fixed one), start again on a fresh port, ``attempts`` times at most.
    """
    for attempt in range(1, attempts + 1):
        server = start_server(
            app,
            env,
            log_path,
            host=host,
            port=port,
            args=args,
            config=config,
            pythonpath=pythonpath,
            new_session=new_session,
        )
        try:
            server.wait_until_ready(ready_ctx, timeout=ready_timeout)
        except NotAnswering:
            server.stop()
            lost_race = port is None and "Connection in use" in server.log()
            if lost_race and attempt < attempts:
                continue
            raise
        try:
            yield server
        finally:
            server.stop()
        return


def supervise(
    procs: Sequence[Process],
    text: str,
    probes: Sequence[Probe] = (),
    *,
    prog: str = "demo",
    timeout: float = READY_TIMEOUT,
) -> int:
    """Wait for ``probes``, print ``text``, then run until Ctrl-C/SIGTERM or a process exits.

    Every exit path stops every process. Returns 0 after Ctrl-C/SIGTERM, 1
    otherwise. Messages start with ``prog``.
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
                raise NotAnswering("a service exited (see its log above)")
            time.sleep(0.2)
    except NotAnswering as exc:
        print(f"{prog}: {exc}; stopping all", file=sys.stderr, flush=True)
    finally:
        stop_all(procs)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"{prog}: stopped", flush=True)
    return 0 if stopping else 1
