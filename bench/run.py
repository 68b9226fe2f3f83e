"""`make bench`: every server of issue 13 side by side, in interleaved rounds, CPU per operation.

    .venv/bin/python -m bench [--rounds 3] [--seconds 4] [--quick]

All six servers are started afresh for each round (two instances of one
server differ by ~10 %, as long as they run); each round runs every test
in 1 s slices, the servers taking turns slice by slice (the starting server
rotates per round), so a noisy moment of the shared machine hits every
server of a comparison alike, not one server's whole figure. The server is
pinned to CPU 0 and this process (with the openssl clients it starts) to
CPU 1; server CPU is the utime+stime of the server's whole process tree over
the measurement (bench/procstat.py).

Writes bench/RESULTS.md, bench/results.png and bench/results.jsonl (one JSON
row per measurement, the raw material of the first two).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

from bench import clients, procstat, report, stalled
from bench.app import BODY, PATH
from bench.findings import HANDSHAKE_NOTES, KEEPALIVE_NOTES
from bench.servers import CLIENT_CPU, SERVER_CPU, Pki, Server, matrix
from pki import cli as pki_cli

HERE = Path(__file__).resolve().parent
KEEPALIVE_CONNECTIONS = 8
NEW_CONNECTION_CLIENTS = 4
MAX_REQUESTS = 1_000_000  # per measurement, on top of the time bound
RESUME_CHECK_CONNECTIONS = 200  # own client, per server, after the rounds
SLICE_S = 1  # one client run; a measurement is --seconds slices, servers alternating
SOAK_MAX_S = 60.0  # the RSS soak's time bound (--soak counts operations)

# which servers each test runs on (issue 13's table)
PLAN: dict[str, tuple[str, ...]] = {
    "new": ("ours", "stock", "nginx", "plain"),
    "bare": ("ours", "stock", "nginx"),
    "resumed": ("ours", "stock", "nginx"),
    "keepalive": ("ours", "ours-policy", "ours-policy-log", "stock", "plain", "nginx"),
}


@dataclass
class Sample:
    """One client run against one server and the server CPU it cost."""

    result: clients.LoadResult
    command: str
    user_s: float
    system_s: float
    by_process: dict[int, float]
    pids_changed: bool
    access_log: tuple[int, int] | None = None  # access-log calls and their thread CPU ns


def sample(srv: Server, test: str, pki: Pki, seconds: int) -> Sample:
    before = procstat.cpu_by_pid(srv.pid)
    user0, sys0 = procstat.user_system(srv.pid)
    timer0 = srv.access_totals()
    result, command = _client(srv, test, pki, seconds)()
    timer1 = srv.access_totals()
    user1, sys1 = procstat.user_system(srv.pid)
    after = procstat.cpu_by_pid(srv.pid)
    timed = None
    if timer0 is not None and timer1 is not None:
        timed = (timer1[0] - timer0[0], timer1[1] - timer0[1])
    return Sample(
        result, command, user1 - user0, sys1 - sys0,
        {p: after[p] - before.get(p, 0.0) for p in after}, sorted(before) != sorted(after),
        timed,
    )  # fmt: skip


def row_from(srv: Server, test: str, samples: list[Sample]) -> dict[str, Any]:
    """One round's row for a server: its slices added up (CPU, operations, bytes, workers)."""
    ops = sum(s.result.ops for s in samples)
    failures = sum(s.result.failures for s in samples)
    wall = sum(s.result.wall_s for s in samples)
    user, system = sum(s.user_s for s in samples), sum(s.system_s for s in samples)
    cpu = user + system
    by_process: Counter[str] = Counter()
    by_pid: Counter[str] = Counter()
    for s in samples:
        by_process.update({str(p): v for p, v in s.by_process.items()})
        by_pid.update(s.result.by_pid)

    def weighted(values: list[tuple[float | None, int]]) -> float | None:
        known = [(v, n) for v, n in values if v is not None]
        total = sum(n for _, n in known)
        return sum(v * n for v, n in known) / total if known and total else None

    bytes_per_op = weighted([(s.result.bytes_per_op, s.result.ops) for s in samples])
    ok = ops > 0 and failures == 0
    if bytes_per_op is not None and test != "bare":
        ok = ok and bytes_per_op >= len(BODY)  # the body reached the client
    row: dict[str, Any] = {
        "server": srv.name,
        "test": test,
        "slices": len(samples),
        "ops": ops,
        "failures": failures,
        "wall_s": round(wall, 3),
        "server_cpu_s": round(cpu, 3),
        "us_per_op": 1e6 * cpu / max(ops, 1),
        "server_util": round(cpu / wall, 3) if wall else None,
        # share of the server's CPU spent in the kernel (syscalls, TCP) rather than user code
        "kernel_share": system / cpu if cpu > 0 else None,
        "cpu_by_process": {p: round(v, 3) for p, v in sorted(by_process.items())},
        "pids_changed": any(s.pids_changed for s in samples),
        "ok": ok,
    }
    resumed = weighted([(s.result.resumed_fraction, s.result.ops) for s in samples])
    if resumed is not None:
        row["resumed_fraction"] = resumed
    if bytes_per_op is not None:
        row["bytes_per_op"] = round(bytes_per_op, 1)
    if by_pid:
        row["by_pid"] = dict(by_pid)
        if srv.workers > 1:  # nginx's one worker takes everything by construction
            # each slice opens its own 8 connections: the worst slice is the spread's figure
            shares = [clients.busiest_share(s.result.by_pid) for s in samples]
            row["busiest_share"] = max(v for v in shares if v is not None)
    timed = [s.access_log for s in samples if s.access_log is not None]
    if timed and sum(c for c, _ in timed):
        calls, ns = sum(c for c, _ in timed), sum(n for _, n in timed)
        row["access_log_calls"] = calls
        row["access_log_us_per_call"] = ns / calls / 1000
    details = [s.result.detail for s in samples if s.result.detail]
    if details:
        row["detail"] = details[-1]
    return row


def _client(
    srv: Server, test: str, pki: Pki, seconds: int
) -> Callable[[], tuple[clients.LoadResult, str]]:
    ctx: ssl.SSLContext | None = pki.client_context() if srv.tls else None
    own = "bench/clients.py http_load"
    if test == "keepalive":
        desc = f"{own}: {KEEPALIVE_CONNECTIONS} keep-alive connections, GET {PATH}, {seconds} s"

        def keepalive() -> tuple[clients.LoadResult, str]:
            r = clients.http_load(
                srv.port, ctx, PATH, BODY, connections=KEEPALIVE_CONNECTIONS,
                seconds=seconds, max_requests=MAX_REQUESTS,
            )  # fmt: skip
            return r, desc

        return keepalive
    if test == "new" and not srv.tls:
        desc = (
            f"{own}: {NEW_CONNECTION_CLIENTS} clients, one request per TCP connection, {seconds} s"
        )

        def plain_new() -> tuple[clients.LoadResult, str]:
            r = clients.http_load(
                srv.port, None, PATH, BODY, connections=NEW_CONNECTION_CLIENTS,
                seconds=seconds, max_requests=MAX_REQUESTS, per_connection=1,
            )  # fmt: skip
            return r, desc

        return plain_new
    mode = "reuse" if test == "resumed" else "new"
    path = None if test == "bare" else PATH
    argv = clients.s_time_argv(
        srv.port, mode, seconds, pki.client_cert, pki.client_key, pki.chain_store, path
    )

    def s_time() -> tuple[clients.LoadResult, str]:
        return clients.run_s_time(argv, seconds), shlex.join(argv)

    return s_time


def versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except OSError as exc:
            return f"not found ({exc})"
        return (p.stdout or p.stderr).strip().splitlines()[0]

    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "python": sys.version.split()[0],
        "openssl (s_time)": first_line(["openssl", "version"]),
        "python ssl": ssl.OPENSSL_VERSION,
        "gunicorn": metadata.version("gunicorn"),
        "flask": metadata.version("flask"),
        "nginx": first_line(["nginx", "-v"]),
        "kernel": platform.release(),
        "cpu": f"{cpu}, {os.cpu_count()} cores",
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--seconds", type=int, default=4,
                    help="1 s slices per server, test and round (default 4)")  # fmt: skip
    ap.add_argument("--soak", type=int, default=100_000,
                    help="operations ours serves in all before its last RSS reading")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round of 1 s, no soak")
    ap.add_argument(
        "--out",
        type=Path,
        help="where RESULTS.md etc. go (default bench/; --quick: var/bench-quick/)",
    )
    ap.add_argument("--render", type=Path, metavar="JSONL",
                    help="only redraw RESULTS.md and results.png from a results.jsonl")  # fmt: skip
    ap.add_argument(
        "--no-pin", dest="pin", action="store_false", help="do not pin server/client CPUs"
    )
    a = ap.parse_args(argv)
    if a.quick:
        a.rounds, a.seconds, a.soak = 1, 1, 0
    if a.out is None:  # a smoke run never overwrites the committed results
        a.out = HERE.parent / "var" / "bench-quick" if a.quick else HERE
    if not 1 <= a.rounds <= 20 or not 1 <= a.seconds <= 60 or not 0 <= a.soak <= 1_000_000:
        ap.error("--rounds 1..20, --seconds 1..60, --soak 0..1000000: the run must stay bounded")
    return a


@dataclass
class Run:
    """The state of one bench run: servers, where rows go, what was served."""

    args: argparse.Namespace
    pin: bool
    work: Path
    pki: Pki
    jsonl: TextIO
    servers: list[Server] = field(default_factory=matrix)
    rows: list[dict[str, Any]] = field(default_factory=list)
    commands: dict[str, str] = field(default_factory=dict)
    served: Counter[str] = field(default_factory=Counter)

    def record(self, row: dict[str, Any]) -> None:
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        self.rows.append(row)

    def start_all(self) -> None:
        """Every server started afresh: each round measures new instances (see round)."""
        for srv in self.servers:
            srv.stop()
            srv.start(self.pki, self.work, self.pin)
            self.served[srv.name] = 0  # what this instance served (the RSS rows' count)
            self.commands[f"server {srv.name}"] = _quote_server(srv, self.work)
            ctx = self.pki.client_context() if srv.tls else None
            # warm-up: imports and first-request paths out of round 1
            clients.http_load(
                srv.port, ctx, PATH, BODY, connections=2, seconds=0.5, max_requests=200
            )
            print(f"started {srv.name} on 127.0.0.1:{srv.port} (pid {srv.pid})", flush=True)

    def round(self, rnd: int) -> None:
        """Each test: --seconds slices of 1 s, the servers taking turns slice by slice.

        Fine interleaving matters most for the small differences (the access
        log's ~tens of us on ~300 us): both servers of a pair see the same
        seconds of the shared machine. Every round starts the servers afresh:
        two instances of one server can differ by ~10 % for as long as they
        run (bench/findings.py), so one instance per server for the whole run
        would bias every comparison the same way in every round.
        """
        self.start_all()
        by_name = {s.name: s for s in self.servers}
        for test, names in PLAN.items():
            shift = rnd % len(names)
            order = names[shift:] + names[:shift]
            samples: dict[str, list[Sample]] = {name: [] for name in order}
            for _ in range(self.args.seconds):
                for name in order:
                    samples[name].append(sample(by_name[name], test, self.pki, SLICE_S))
            for name in order:
                srv = by_name[name]
                command = samples[name][-1].command
                which = f"client {test}" + ("" if srv.tls else " (plain HTTP)")
                self.commands[which] = _portless(command.replace(str(self.work), "$WORK"), srv)
                row = row_from(srv, test, samples[name])
                row["round"] = rnd
                self.served[name] += row["ops"]
                self.record(row)
                print(
                    f"round {rnd + 1}/{self.args.rounds} {test:9s} {name:16s} "
                    f"{row['us_per_op']:9.1f} us/op ops={row['ops']:<7d} ok={row['ok']}"
                    + (f"  ({row['detail']})" if "detail" in row else ""),
                    flush=True,
                )
        for srv in self.servers:
            if srv.kind != "nginx":
                self.record(self.rss_row(srv, "rss", rnd))

    def rss_row(self, srv: Server, test: str, rnd: int) -> dict[str, Any]:
        rss = procstat.rss_kib(srv.worker_pids())
        return {
            "server": srv.name, "test": test, "round": rnd, "ok": bool(rss),
            "rss_mib": sum(rss.values()) / len(rss) / 1024 if rss else None,
            "rss_kib_by_pid": {str(k): v for k, v in rss.items()},
            "requests_so_far": self.served[srv.name],
        }  # fmt: skip

    def resume_check(self) -> None:
        """Which worker resumed how many sessions (s_time reports only a total)."""
        for srv in self.servers:
            if srv.name in PLAN["resumed"]:
                by_pid = clients.resumption_by_worker(
                    srv.port, self.pki.client_context(), PATH, RESUME_CHECK_CONNECTIONS
                )
                self.record({"server": srv.name, "test": "resume-by-worker", "ok": True,
                             "round": self.args.rounds - 1, "by_pid": by_pid})  # fmt: skip
                self.commands["client resume-by-worker"] = (
                    f"bench/clients.py resumption_by_worker: {RESUME_CHECK_CONNECTIONS} "
                    "sequential connections, each offering the previous session"
                )

    def stalled_check(self) -> None:
        """Target 6: ours answers while 1,000 connections stall before their handshake."""
        ours = next(s for s in self.servers if s.name == "ours")
        row = stalled.legit_latency(ours.port, self.pki.client_context(), PATH, BODY)
        self.record({"server": "ours", "test": "stalled", "round": self.args.rounds - 1, **row})
        self.commands["client stalled"] = (
            f"bench/stalled.py: {stalled.STALLED} TCP connections that send nothing, then "
            f"{stalled.PROBES} requests, each on a new mTLS connection, timed at the client"
        )

    def soak(self) -> None:
        """Keep-alive on ours until it has served --soak operations in all, then its RSS again.

        Bounded by SOAK_MAX_S too: on a slow machine the note says how many it got to.
        """
        ours = next(s for s in self.servers if s.name == "ours")
        # the reading the soak's is compared with: taken here, after the resume and
        # stalled checks, whose connections the round's "rss" reading has not seen
        self.record(self.rss_row(ours, "rss-presoak", self.args.rounds - 1))
        left = self.args.soak - self.served["ours"]
        if left > 0:
            r = clients.http_load(
                ours.port, self.pki.client_context(), PATH, BODY,
                connections=KEEPALIVE_CONNECTIONS, seconds=SOAK_MAX_S, max_requests=left,
            )  # fmt: skip
            self.served["ours"] += r.ops
        self.record(self.rss_row(ours, "rss-soak", self.args.rounds - 1))


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.render:
        return render(a.render, a.out)
    pin = a.pin and len(os.sched_getaffinity(0)) >= 2
    if pin:
        os.sched_setaffinity(0, {CLIENT_CPU})  # this process and the openssl clients it starts
    load_before = os.getloadavg()
    started = time.monotonic()
    a.out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="mtls-bench-") as tmp,
        (a.out / "results.jsonl").open("w") as jsonl,
    ):
        work = Path(tmp)
        pki = Pki(work / "pki")
        if pki_cli.main(["demo", "--dir", str(pki.dir)]) != 0:
            raise SystemExit("bench: `pki demo` failed to build the bench PKI; see its output")
        pki.chain_store.write_bytes(pki.root.read_bytes() + (pki.dir / "global.crt").read_bytes())
        run = Run(a, pin, work, pki, jsonl)
        try:
            for rnd in range(a.rounds):
                run.round(rnd)
            run.resume_check()
            run.stalled_check()
            run.soak()
        finally:
            for srv in run.servers:
                srv.stop()
        invoked = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)
        meta = {
            "title_note": _title(a, pin, time.monotonic() - started, load_before),
            "commands": {"the run (make bench)": invoked.strip(), **run.commands},
            "versions": versions(),
            "notes": _notes(run.rows),
        }
        labels = [(s.name, s.label) for s in run.servers]
        jsonl.write(json.dumps({"meta": meta, "servers": labels}) + "\n")
    return render(a.out / "results.jsonl", a.out)


def render(jsonl: Path, out: Path) -> int:
    """RESULTS.md and results.png from a results.jsonl (its last line carries the run's meta)."""
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    tail = [r for r in rows if "meta" in r]
    if not tail:
        raise SystemExit(f"bench: {jsonl} has no meta line: the run that wrote it did not finish")
    labels = [(name, label) for name, label in tail[-1]["servers"]]
    rows = [r for r in rows if "meta" not in r]
    (out / "RESULTS.md").write_text(report.render_markdown(rows, labels, tail[-1]["meta"]))
    report.chart(rows, labels, out / "results.png")
    print(f"\nwrote {out / 'RESULTS.md'} and {out / 'results.png'} from {jsonl}")
    for t in report.targets(rows):
        print(f"  {t.number:3s} {t.text:58s} {report.fmt_value(t):>24s}  {t.verdict}")
    failed = [f"{r['server']} {r['test']} round {r['round'] + 1}" for r in rows if not r.get("ok")]
    if failed:
        # a missed target is a result; a measurement that did not complete is a broken bench
        print(f"bench: measurements not completed (see Notes in RESULTS.md): {', '.join(failed)}")
        return 1
    return 0


def _portless(line: str, srv: Server) -> str:
    return line.replace(f"127.0.0.1:{srv.port}", "127.0.0.1:$PORT")


def _quote_server(srv: Server, work: Path) -> str:
    line = shlex.join(srv.argv).replace(str(work), "$WORK").replace(sys.executable, "python")
    line = _portless(line.replace(str(HERE.parent) + "/", ""), srv)
    if srv.kind == "ours":
        line = "MTLS_CERTFILE=$WORK/pki/userservice-chain.crt MTLS_KEYFILE=... MTLS_CA_CERTS=... " \
               f"MTLS_RELOAD_INTERVAL=0 BENCH_ACCESS_LOG={int(srv.access_log)} " + line  # fmt: skip
    return f"taskset -c {SERVER_CPU} " + line


def _title(a: argparse.Namespace, pin: bool, elapsed: float, load: tuple[float, ...]) -> str:
    pinning = f"server on CPU {SERVER_CPU}, clients on CPU {CLIENT_CPU}" if pin else "NOT pinned"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (
        f"Run of {when}: {a.rounds} round(s); in each, every test runs {a.seconds} slice(s) of "
        f"{SLICE_S} s per server, the servers taking turns slice by slice; {pinning}; "
        f"ECDSA P-256 (`pki demo`), TLS 1.3; run took {elapsed:.0f} s; "
        f"load average at start {load[0]:.2f} (a shared machine makes every figure noisy: "
        "read the ratios, which compare servers within the same rounds)."
    )


def _notes(rows: list[dict[str, Any]]) -> list[str]:
    notes = [
        "Server CPU = utime+stime from /proc/<pid>/stat of the server's master and all its "
        "workers, summed over the measurement, divided by the completed operations.",
        "Every server runs without an access log except `ours + policy + access log`, which keeps "
        "gunicorn_conf.py's access_log_format writing to /dev/null (bench/ours_conf.py).",
        "gunicorn servers: 2 workers x 4 threads, keep-alive 5 s; nginx: 1 worker "
        "(`return 200` with the same body; `ssl_verify_client on`, depth 2).",
        "RSS: VmRSS per worker after each round, mean over the workers; nginx is not compared.",
        *HANDSHAKE_NOTES,
        *KEEPALIVE_NOTES,
    ]
    notes += _rss_flatness_notes(rows)
    notes += _access_log_notes(rows)
    for r in rows:
        if r.get("test") == "resume-by-worker":
            parts = ", ".join(f"pid {p}: {v[0]}/{v[1]}" for p, v in sorted(r["by_pid"].items()))
            notes.append(
                f"{r['server']}: sessions resumed per worker (resumed/connections): {parts}"
            )
    bad = [r for r in rows if not r.get("ok")]
    for r in bad:
        notes.append(f"NOT COUNTED: {r['server']} {r['test']} round {r['round'] + 1}: "
                     f"{r.get('failures', '?')} failures, {r.get('detail', '')}")  # fmt: skip
    changed = [r for r in rows if r.get("pids_changed")]
    for r in changed:
        notes.append(f"{r['server']} {r['test']} round {r['round'] + 1}: the process set changed "
                     "(a worker restarted), so its CPU may be under-counted.")  # fmt: skip
    return notes


def _rss_flatness_notes(rows: list[dict[str, Any]]) -> list[str]:
    """ours' RSS before and after the soak, on the one instance that served it.

    The "before" is the soak's own reading (rss-presoak): the round's last
    "rss" reading predates the resume and stalled checks, whose 1,000
    connections' growth would be put down to the soak's requests. No soak
    requests (--quick): nothing to say.
    """
    ours = [r for r in rows if r.get("server") == "ours" and r.get("ok")]
    before = [r for r in ours if r.get("test") == "rss-presoak"]
    after = [r for r in ours if r.get("test") == "rss-soak"]
    if not before or not after:
        return []
    first, last = before[-1], after[-1]
    if last["requests_so_far"] <= first["requests_so_far"]:
        return []
    return [
        f"ours RSS flatness: {first['rss_mib']:.1f} MiB after {first['requests_so_far']:,} "
        f"operations, {last['rss_mib']:.1f} MiB after {last['requests_so_far']:,} "
        f"({last['rss_mib'] - first['rss_mib']:+.2f} MiB)."
    ]


def _access_log_notes(rows: list[dict[str, Any]]) -> list[str]:
    """Target 2b's two readings: the timed call (the verdict's) and the whole-server difference."""
    logged = report.spread(rows, "ours-policy-log", "keepalive", "access_log_us_per_call")
    unlogged = report.spread(rows, "ours-policy", "keepalive", "access_log_us_per_call")
    with_log = report.values(rows, "ours-policy-log", "keepalive")
    without = report.values(rows, "ours-policy", "keepalive")
    diffs = [with_log[r] - without[r] for r in sorted(with_log.keys() & without.keys())]
    if not diffs or logged is None or unlogged is None:
        return []
    per_round = ", ".join(f"{d:+,.0f}" for d in diffs)
    return [
        "Target 2b, the access-log call timed in the workers (thread CPU, us per call, median "
        f"(min-max) over the rounds): with the log {logged.fmt(1)}, without (gunicorn's early "
        f"return) {unlogged.fmt(1)}. The whole-server difference, ours + policy + log minus "
        f"ours + policy, read {per_round} us per request in the rounds: two instances of one "
        "server differ by more than the log costs (bench/accesstimer.py), so it is shown, not "
        "judged. Both servers carry the timer: two reads of the thread's CPU clock per request "
        "(a syscall each, ~0.8 us in a loop on this machine's kind), in their CPU figures too.",
    ]


if __name__ == "__main__":
    sys.exit(main())
