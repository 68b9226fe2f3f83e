"""The servers compared, each a subprocess pinned to CPU 0 on a free 127.0.0.1 port.

All serve bench/app.py (nginx: the same bytes from `return 200`), with the
same PKI (pki demo: the userservice certificate, trusting the root only) and
the same shape: gunicorn 2 workers x 4 threads, keep-alive 5 s; nginx 1
worker (it is event-driven; with the server held on one core a second worker
adds nothing but a second process).
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import accesstimer, procstat
from bench.app import BODY, PATH
from bench.clients import ResponseError, connect, read_response, request_bytes
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SERVER_CPU = 0
CLIENT_CPU = 1
WORKERS = 2
THREADS = 4
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Pki:
    """The files of a `pki demo` directory that the bench uses."""

    dir: Path

    @property
    def server_chain(self) -> Path:
        return self.dir / "userservice-chain.crt"

    @property
    def server_key(self) -> Path:
        return self.dir / "userservice.key"

    @property
    def root(self) -> Path:
        return self.dir / "root.crt"

    @property
    def client_cert(self) -> Path:
        return self.dir / "homepage.crt"

    @property
    def client_chain(self) -> Path:
        return self.dir / "homepage-chain.crt"

    @property
    def client_key(self) -> Path:
        return self.dir / "homepage.key"

    @property
    def chain_store(self) -> Path:
        """root + intermediate: s_time builds the client's chain from it (clients.s_time_argv)."""
        return self.dir / "root+global.crt"

    def client_context(self, with_cert: bool = True) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.root))
        if with_cert:
            ctx.load_cert_chain(str(self.client_chain), str(self.client_key))
        return ctx


@dataclass
class Server:
    """One server under test: how to start it and, once started, its process tree."""

    name: str
    label: str
    kind: str  # "ours" | "gunicorn" | "nginx"
    tls: bool = True
    app: str = "bench.app:app"
    access_log: bool = False
    time_access: bool = False  # each worker times its access-log calls (bench/accesstimer.py)
    workers: int = WORKERS
    port: int = 0
    argv: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def command(self, pki: Pki, work: Path) -> tuple[list[str], dict[str, str]]:
        """argv and extra environment; the argv is also what RESULTS.md quotes."""
        bind = f"127.0.0.1:{self.port}"
        gunicorn = [sys.executable, "-m", "gunicorn", "--bind", bind]
        shape = ["--workers", str(self.workers), "--threads", str(THREADS)]
        if self.kind == "ours":
            env = {
                "MTLS_CERTFILE": str(pki.server_chain),
                "MTLS_KEYFILE": str(pki.server_key),
                "MTLS_CA_CERTS": str(pki.root),
                "MTLS_RELOAD_INTERVAL": "0",
                "BENCH_ACCESS_LOG": "1" if self.access_log else "0",
            }
            if self.time_access:
                env[accesstimer.DIR_ENV] = str(self.timer_dir(work))
            return [*gunicorn, "-c", str(BENCH / "ours_conf.py"), *shape, self.app], env
        if self.kind == "gunicorn":
            argv = [*gunicorn, "-c", str(BENCH / "stock_conf.py"), *shape]
            if self.tls:
                argv += ["--certfile", str(pki.server_chain), "--keyfile", str(pki.server_key)]
                argv += ["--ca-certs", str(pki.root), "--cert-reqs", "2"]
            return [*argv, self.app], {}
        conf = work / f"{self.name}.conf"
        conf.write_text(nginx_conf(self.port, pki, work / self.name, self.workers))
        return ["nginx", "-p", str(work / self.name), "-e", "stderr", "-c", str(conf)], {}

    def timer_dir(self, work: Path) -> Path:
        return work / f"access-timer-{self.name}"

    def access_totals(self) -> tuple[int, int] | None:
        """(calls, thread CPU ns) of the running instance's access-log calls so far, if timed."""
        if not self.time_access or self.log_path is None:
            return None
        return accesstimer.read(self.timer_dir(self.log_path.parent))

    def start(self, pki: Pki, work: Path, pin: bool) -> None:
        self.port = free_port()
        if self.time_access:  # a new instance's totals start from zero
            shutil.rmtree(self.timer_dir(work), ignore_errors=True)
            self.timer_dir(work).mkdir()
        argv, extra = self.command(pki, work)
        self.argv = argv
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MTLS_", "GUNICORN"))}
        env.update(extra)
        self.log_path = work / f"{self.name}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                (["taskset", "-c", str(SERVER_CPU)] if pin else []) + argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready(pki)

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"server {self.name} is not running")
        return self.process.pid

    def pids(self) -> list[int]:
        return procstat.tree(self.pid, procstat.all_stats())

    def worker_pids(self) -> list[int]:
        return [p for p in self.pids() if p != self.pid]

    def log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-2000:]

    def get(self, pki: Pki, with_cert: bool = True) -> tuple[int, bytes]:
        ctx = pki.client_context(with_cert) if self.tls else None
        with connect(self.port, ctx) as sock:
            sock.sendall(request_bytes(PATH, close=True))
            status, _, body = read_response(sock, bytearray())
            return status, body

    def _wait_ready(self, pki: Pki) -> None:
        """Ready = the body is served and every worker has booted; then the fail-closed check."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start-up; its log:\n{self.log_tail()}")
            try:
                ok = self.get(pki) == (200, BODY)
            except (OSError, ResponseError):
                ok = False
            if ok and len(self.worker_pids()) >= self.workers:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} not serving {PATH} on port {self.port} after "
                    f"{START_TIMEOUT_S:.0f} s; its log:\n{self.log_tail()}"
                )
            time.sleep(0.1)
        if self.tls:
            try:
                refused = self.get(pki, with_cert=False)[0] != 200
            except (OSError, ResponseError):
                refused = True  # a TLS alert or reset: gunicorn's answer
            if not refused:  # nginx answers 400 itself, which counts as refused
                raise RuntimeError(f"{self.name} served {PATH} to a client without a certificate")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            # nginx: SIGQUIT is its graceful stop; gunicorn: SIGTERM is.
            self.process.send_signal(signal.SIGQUIT if self.kind == "nginx" else signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # its own session, started above
                self.process.wait(timeout=5)
        self.process = None


def nginx_conf(port: int, pki: Pki, prefix: Path, workers: int) -> str:
    """nginx serving the app's bytes itself, requiring a client certificate like our worker.

    `ssl_verify_client on` + the root as `ssl_client_certificate` (depth 2:
    leaf + intermediate) is the mTLS contract; TLS 1.3 is enabled explicitly
    because nginx 1.22's default ssl_protocols stops at TLS 1.2. Access log
    off and keepalive_requests high, as for every other server here.
    """
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    temp_paths = "\n".join(
        f"  {sub}_temp_path {prefix / sub};"
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""# written by bench/servers.py
daemon off;
worker_processes {workers};
pid {prefix / "nginx.pid"};
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
{temp_paths}
  keepalive_requests 10000000;
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate {pki.server_chain};
    ssl_certificate_key {pki.server_key};
    ssl_client_certificate {pki.root};
    ssl_verify_client on;
    ssl_verify_depth 2;
    location = {PATH} {{
      default_type application/json;
      add_header X-Pid $pid;
      return 200 '{BODY.decode()}';
    }}
  }}
}}
"""


def matrix() -> list[Server]:
    """The six servers of issue 13's table, in the order the report shows them."""
    return [
        Server("ours", "ours", "ours"),
        Server(
            "ours-policy", "ours + DN policy", "ours", app="bench.app:policy_app", time_access=True
        ),
        Server(
            "ours-policy-log",
            "ours + policy + access log",
            "ours",
            app="bench.app:policy_app",
            access_log=True,
            time_access=True,
        ),
        Server("stock", "stock gunicorn gthread", "gunicorn"),
        Server("plain", "plain-HTTP gunicorn", "gunicorn", tls=False),
        Server("nginx", "nginx ssl_verify_client on", "nginx", workers=1),
    ]
