"""deploy/systemd: the units systemd would load, the settings our code reads, the users they run as.

What is checked without booting systemd: `systemd-analyze verify` on every
unit (syntax, directives, the first command's binary), every command of
every unit exists, the sandboxing and reload choices the README promises,
the timers' periods against the lifetimes they must beat (as
`systemd-analyze calendar` computes them), the env files name only settings
the code declares and mean the same to systemd and to sh, and
`systemd-sysusers` creates the users the units run as.

The shipped units name the installed checkout, /opt/internal-mtls; the test
renders them with this checkout and the venv running the tests in its place,
one documented substitution, so verify finds real binaries.
The renewal and CRL units' commands are also run for real, in order, against
a running server (paths moved into a temporary directory, ownership given to
the test's user); nothing signals the server: its own watcher must pick up
what they publish, the renewed certificate for new connections and the CRL.
Deliberately NOT tested: running them under a real systemd (the sandbox's
effect on gunicorn is the part a container cannot show).
"""

from __future__ import annotations

import datetime
import grp
import itertools
import os
import pwd
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from gunicorn.config import Config

from homepage.settings import DEFAULT_OPS_DN, HomePageEnv
from mtls.envconfig import declarations
from mtls.settings import ServerSettings
from pki.directory import CRL_DAYS
from pki.lifetime import parse_duration
from tests.clients import get, presented_serial
from tests.servers import ECHO, ROOT, Server, client_context, running
from tests.tools import require_tool
from userservice.settings import DEFAULT_ALLOWED_DN, UserServiceEnv

UNITS = ROOT / "deploy" / "systemd"
PREFIX = "/opt/internal-mtls"  # the installed checkout, with its venv in .venv
SERVICES = ("userservice", "homepage")
TLS_DIR = "/etc/internal-mtls/tls"
#: Read by the metrics listener the runtime is adding (SPEC "Operating it"), declared elsewhere.
ALSO_KNOWN = {"MTLS_METRICS_BIND"}
#: Names sh and systemd agree on: KEY=plain (no quotes, spaces, $ or \) or KEY='literal'.
ENV_LINE = re.compile(r"(?P<key>[A-Z][A-Z0-9_]*)=(?:'(?P<quoted>[^']*)'|(?P<plain>[^'\"\s$\\`]*))")

Unit = dict[str, dict[str, list[str]]]


def shipped() -> list[Path]:
    return sorted([*UNITS.glob("*.service"), *UNITS.glob("*.timer")])


def parse_unit(text: str) -> Unit:
    """Section -> key -> every value in order (ExecStart repeats); comments and blanks skipped."""
    unit: Unit = {}
    section = unit.setdefault("", {})
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = unit.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def load_unit(name: str) -> Unit:
    return parse_unit((UNITS / name).read_text())


def one(unit: Unit, section: str, key: str) -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"{key} in [{section}]: {values}"
    return values[0]


def commands(unit: Unit) -> list[list[str]]:
    found = []
    for key in ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecReload", "ExecStop"):
        for value in unit.get("Service", {}).get(key, []):
            found.append(shlex.split(value.lstrip("-@+!:")))
    return found


def read_env_file(path: Path) -> dict[str, str]:
    """The strict subset of EnvironmentFile syntax the shipped files keep to; else it fails."""
    env = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = ENV_LINE.fullmatch(line)
        assert match, f"{path}:{number}: not KEY=plain or KEY='literal': {line!r}"
        env[match["key"]] = match["quoted"] if match["quoted"] is not None else match["plain"]
    return env


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped units with /opt/internal-mtls/.venv/bin -> this venv and /opt/... -> ROOT."""
    out = tmp_path_factory.mktemp("units")
    venv_bin = str(Path(sys.executable).parent)
    for path in shipped():
        text = path.read_text()
        assert PREFIX in text, f"{path.name} does not name {PREFIX}"
        text = text.replace(f"{PREFIX}/.venv/bin", venv_bin).replace(PREFIX, str(ROOT))
        (out / path.name).write_text(text)
    return out


def test_every_unit_passes_systemd_analyze_verify(rendered: Path) -> None:
    analyze = require_tool("systemd-analyze")
    instances = [f"pki-renew@{s}.{kind}" for s in SERVICES for kind in ("service", "timer")]
    names = [p.name for p in sorted(rendered.iterdir())]
    proc = subprocess.run(
        [analyze, "verify", *names, *instances],
        cwd=rendered,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = proc.stdout + proc.stderr
    ours = [line for line in output.splitlines() if any(n in line for n in [*names, *instances])]
    assert proc.returncode == 0, output
    assert not ours, output  # a warning ("Unknown key", "ignoring") is a setting systemd drops


def test_every_command_of_every_unit_exists(rendered: Path) -> None:
    # verify checks the first ExecStart only; the publishing steps are checked here.
    for path in sorted(rendered.iterdir()):
        for argv in commands(parse_unit(path.read_text())):
            binary = Path(argv[0])
            assert binary.is_absolute(), f"{path.name}: {argv[0]} is not an absolute path"
            assert os.access(binary, os.X_OK), f"{path.name}: {binary} is not an executable"


@pytest.mark.parametrize("service", SERVICES)
def test_service_units_reload_on_hup_and_run_sandboxed(service: str) -> None:
    unit = load_unit(f"{service}.service")
    run = unit["Service"]
    start = shlex.split(one(unit, "Service", "ExecStart"))
    assert start == [
        f"{PREFIX}/.venv/bin/gunicorn", "-c", f"{PREFIX}/gunicorn_conf.py", f"wsgi:{service}",
    ]  # fmt: skip
    assert (ROOT / "gunicorn_conf.py").is_file()
    assert one(unit, "Service", "EnvironmentFile") == f"/etc/internal-mtls/{service}.env"
    assert one(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(unit, "Service", "Type") == "notify"  # gunicorn 27 sends READY=1
    assert one(unit, "Service", "User") == service
    expected = {
        "ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes",
        "ProtectHome": "yes", "CapabilityBoundingSet": "", "LimitNOFILE": "65536",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    }  # fmt: skip
    assert {k: one(unit, "Service", k) for k in expected} == expected
    assert "ReadWritePaths" not in run  # writable: StateDirectory (SQLite) and /tmp only


def test_the_renewal_publishes_what_the_services_read() -> None:
    published = set()
    for name in ("pki-renew@.service", "pki-crl.service"):
        for argv in commands(load_unit(name)):
            if Path(argv[0]).name == "mv":
                published.add(argv[-1])
    for service in SERVICES:
        env = read_env_file(UNITS / f"{service}.env")
        tls = {v for v in env.values() if v.startswith(TLS_DIR)}
        instance = {p.replace("%i", service) for p in published}
        # root.crt is installed once by hand; everything else must come from a timer.
        assert tls - instance == {f"{TLS_DIR}/root.crt"}, tls - instance
        # The server's watcher picks up what the timers publish: never switched off.
        assert "MTLS_RELOAD_INTERVAL" not in env
    (interval,) = [f for f, d in declarations(ServerSettings) if d.var == "MTLS_RELOAD_INTERVAL"]
    assert interval.default == 2.0


def test_the_timers_signal_no_service() -> None:
    """SIGHUP (systemctl reload or restart, kill) would replace every worker for nothing."""
    for name in ("pki-renew@.service", "pki-crl.service"):
        binaries = [Path(argv[0]).name for argv in commands(load_unit(name))]
        assert binaries[0] == "pki", name
        assert set(binaries[1:]) == {"install", "mv"}, name


def elapses(analyze: str, spec: str) -> list[datetime.datetime]:
    proc = subprocess.run(
        [analyze, "calendar", "--iterations", "4", spec],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={**os.environ, "TZ": "UTC"},
    )
    found = re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\S+ \S+) UTC", proc.stdout)
    assert len(found) == 4, proc.stdout
    return [datetime.datetime.fromisoformat(f) for f in found]


def longest_gap(analyze: str, timer: str) -> datetime.timedelta:
    """The longest time between two runs, the randomized delay included."""
    unit = load_unit(timer)
    times = elapses(analyze, one(unit, "Timer", "OnCalendar"))
    gap = max(b - a for a, b in itertools.pairwise(times))
    delay = one(unit, "Timer", "RandomizedDelaySec")
    return gap + parse_duration(delay.replace("min", "m"))


def test_timers_renew_twice_within_each_lifetime() -> None:
    analyze = require_tool("systemd-analyze")
    renew = shlex.split(load_unit("pki-renew@.service")["Service"]["ExecStart"][0])
    lifetime = parse_duration(renew[renew.index("--valid") + 1])
    assert 2 * longest_gap(analyze, "pki-renew@.timer") <= lifetime
    crl = shlex.split(load_unit("pki-crl.service")["Service"]["ExecStart"][0])
    assert "--days" not in crl  # pki crl's default lifetime, CRL_DAYS
    assert 2 * longest_gap(analyze, "pki-crl.timer") <= datetime.timedelta(days=CRL_DAYS)
    for timer in ("pki-renew@.timer", "pki-crl.timer"):
        assert one(load_unit(timer), "Timer", "Persistent") == "yes"


@pytest.mark.parametrize("service", SERVICES)
def test_env_files_name_only_settings_the_code_declares(service: str) -> None:
    env = read_env_file(UNITS / f"{service}.env")
    known = ALSO_KNOWN | {
        d.var for cls in (ServerSettings, UserServiceEnv, HomePageEnv) for _, d in declarations(cls)
    }
    ours = {k for k in env if k.startswith(("MTLS_", "USERSERVICE_", "HOMEPAGE_"))}
    assert ours - known == set()
    assert set(env) - ours == {"GUNICORN_CMD_ARGS"}
    gunicorn = Config().parser().parse_args(shlex.split(env["GUNICORN_CMD_ARGS"]))
    assert gunicorn.bind
    assert env["MTLS_METRICS_BIND"].startswith("127.0.0.1:")
    # The backslashes survived the quoting: the regexes are the code's defaults.
    if service == "userservice":
        assert env["USERSERVICE_ALLOWED_DN"] == DEFAULT_ALLOWED_DN
    else:
        assert env["HOMEPAGE_OPS_DN"] == DEFAULT_OPS_DN


@pytest.mark.parametrize("service", SERVICES)
def test_env_files_mean_the_same_to_sh(service: str) -> None:
    path = UNITS / f"{service}.env"
    proc = subprocess.run(
        ["sh", "-c", 'set -a; . "$0"; exec env -0', str(path)],
        capture_output=True,
        env={"PATH": os.environ["PATH"]},
        timeout=30,
        check=True,
    )
    seen = dict(e.split("=", 1) for e in proc.stdout.decode().split("\0") if "=" in e)
    env = read_env_file(path)
    assert {k: seen.get(k) for k in env} == env


def test_sysusers_creates_the_users_the_units_run_as(tmp_path: Path) -> None:
    sysusers = require_tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    subprocess.run(
        [sysusers, f"--root={tmp_path}", str(UNITS / "internal-mtls.sysusers")],
        capture_output=True,
        timeout=30,
        check=True,
    )
    users = {line.split(":")[0] for line in (tmp_path / "etc" / "passwd").read_text().splitlines()}
    groups = {line.split(":")[0] for line in (tmp_path / "etc" / "group").read_text().splitlines()}
    for service in SERVICES:
        unit = load_unit(f"{service}.service")
        assert one(unit, "Service", "User") in users
        assert one(unit, "Service", "Group") in groups  # the renewal's install -g %i needs it


def run_unit_commands(unit: str, instance: str, moved: dict[str, Path]) -> None:
    """Run ``unit``'s ExecStart lines as systemd would, one by one, each required to succeed.

    ``moved`` maps the unit's absolute directories to the test's.
    """
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    venv_bin = str(Path(sys.executable).parent)
    lines = load_unit(unit)["Service"]["ExecStart"]
    for argv in (shlex.split(line.replace("%i", instance)) for line in lines):
        argv = [a.replace(f"{PREFIX}/.venv/bin", venv_bin) for a in argv]
        for unit_dir, test_dir in moved.items():
            argv = [a.replace(unit_dir, str(test_dir)) for a in argv]
        for flag, owner in (("-o", user), ("-g", group)):  # ownership is the host's business
            if flag in argv:
                argv[argv.index(flag) + 1] = owner
        subprocess.run(argv, check=True, capture_output=True, timeout=60)


def test_the_renewal_units_rotate_a_running_server(demo_pki: Path, tmp_path: Path) -> None:
    ca, tls = tmp_path / "ca", tmp_path / "tls"
    shutil.copytree(demo_pki, ca)
    tls.mkdir()
    shutil.copy(ca / "root.crt", tls / "root.crt")  # installed once by hand (deploy/README.md)
    for name in ("userservice", "homepage"):
        shutil.copy(ca / f"{name}-chain.crt", tls / f"{name}-chain.crt")
        shutil.copy(ca / f"{name}.key", tls / f"{name}.key")
    shutil.copy(ca / "crl.pem", tls / "crl.pem")
    moved = {"/var/lib/internal-mtls/ca": ca, TLS_DIR: tls}
    settings = read_env_file(UNITS / "userservice.env")
    env = {k: v.replace(TLS_DIR, str(tls)) for k, v in settings.items() if k.startswith("MTLS_")}
    del env["MTLS_METRICS_BIND"]  # a fixed port: the tests' servers must not share one
    ctx = client_context(ca, "homepage")
    with running(ECHO, env, tmp_path / "renew.log", ctx) as server:
        old = presented_serial(server, ctx)
        run_unit_commands("pki-renew@.service", "userservice", moved)
        published = x509.load_pem_x509_certificates((tls / "userservice-chain.crt").read_bytes())
        new = published[0].serial_number
        assert new != old
        assert (tls / "userservice.key").stat().st_mode & 0o777 == 0o640
        lifetime = datetime.timedelta(hours=24)  # --valid 24h (notBefore is backdated for skew)
        assert published[0].not_valid_after_utc <= datetime.datetime.now(datetime.UTC) + lifetime
        deadline = time.monotonic() + 20  # the server's watcher: MTLS_RELOAD_INTERVAL, 2 s
        while presented_serial(server, ctx) != new and time.monotonic() < deadline:
            time.sleep(0.1)
        assert presented_serial(server, ctx) == new
        # A revocation reaches the server only once pki-crl publishes the CRL.
        revoke = [sys.executable, "-m", "pki", "revoke", "eventservice", "--dir", str(ca)]
        subprocess.run(revoke, check=True, capture_output=True, timeout=60)
        event = client_context(ca, "eventservice")
        get(server, event)
        run_unit_commands("pki-crl.service", "userservice", moved)
        deadline = time.monotonic() + 20
        while not refused(server, event) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert refused(server, event)
        environ, _ = get(server, ctx)
        assert environ["SSL_CLIENT_VERIFY"] == "SUCCESS"


def refused(server: Server, ctx: ssl.SSLContext) -> bool:
    """Not served: a TLS alert, a reset, or the connection closed without a response.

    The last is a handshake that began on the replaced CRL's context and
    ended after the worker swapped in the new one: its request is judged
    against the new CRL (mtls.worker's kept-alive re-check) and the
    connection closes unanswered. Seen once in a full run.
    """
    try:
        with (
            socket.create_connection((server.host, server.port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    except (ssl.SSLError, ConnectionError):
        return True
    return not answer.startswith(b"HTTP/1.1 200")
