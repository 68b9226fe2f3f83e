"""The pure parts of `make bench` (bench/): /proc parsing, s_time parsing, targets, RESULTS.md.

No servers and no load: the bench itself is `make bench`; these only make
sure the arithmetic behind its verdicts is right, in well under a second.
"""

from __future__ import annotations

import os
import resource
from collections import Counter
from pathlib import Path

import pytest

from bench import accesstimer, clients, procstat, report
from bench.run import Sample, _notes, row_from
from bench.servers import Server


def test_stat_parsing_survives_a_command_name_with_spaces_and_parentheses() -> None:
    # proc(5): pid (comm) state ppid ... utime(14) stime(15); comm may hold ") ("
    fields = ["S", "41"] + ["0"] * 9 + ["250", "50"] + ["0"] * 30
    st = procstat.parse_stat("4242 (gunicorn: ) (x) " + " ".join(fields))
    assert (st.pid, st.ppid, st.utime_ticks, st.stime_ticks) == (4242, 41, 250, 50)
    assert st.cpu_seconds == 300 / procstat.CLOCK_TICKS


def test_own_process_cpu_matches_getrusage() -> None:
    """/proc/self/stat utime+stime is what the kernel reports to getrusage (to a tick)."""
    sum(i * i for i in range(200_000))  # burn a little CPU so both are non-zero
    mine = procstat.cpu_by_pid(os.getpid())[os.getpid()]
    ru = resource.getrusage(resource.RUSAGE_SELF)
    assert abs(mine - (ru.ru_utime + ru.ru_stime)) <= 2 / procstat.CLOCK_TICKS + 0.02


def test_tree_and_delta_count_master_and_workers_and_new_workers() -> None:
    stats = {
        p: procstat.Stat(p, pp, 0, 0) for p, pp in [(1, 0), (10, 1), (11, 10), (12, 10), (20, 1)]
    }
    assert procstat.tree(10, stats) == [10, 11, 12]
    # 11 spent 0.5 s; 13 is a worker born during the round: counted from zero
    assert procstat.cpu_delta({10: 1.0, 11: 2.0}, {10: 1.0, 11: 2.5, 13: 0.25}) == 0.75


def test_rss_of_this_process_is_read() -> None:
    assert procstat.parse_rss_kib("Name:\tx\nVmRSS:\t  40960 kB\n") == 40960
    assert procstat.rss_kib([os.getpid()])[os.getpid()] > 1024


def test_s_time_output_gives_connections_bytes_and_resumed_share() -> None:
    out = (
        "Collecting connection statistics for 1 seconds\n"
        "*rrr\nrrrr\n\n"
        "8 connections in 0.10s; 80.00 connections/user sec, bytes read 1720\n"
        "8 connections in 2 real seconds, 215 bytes read per connection\n"
    )
    r = clients.parse_s_time(out)
    assert (r.ops, r.bytes_per_op, r.resumed_fraction) == (8, 215.0, 7 / 8)


def _rows() -> list[dict[str, object]]:
    """Two canned rounds: ours half as efficient as nginx, a 20 us access log, etc."""
    rows: list[dict[str, object]] = []
    cpu = {
        ("ours", "new"): (2000, 2200), ("nginx", "new"): (1000, 1100),
        ("ours", "bare"): (1500, 1500), ("nginx", "bare"): (1350, 1350),
        ("ours", "resumed"): (900, 1100),
        ("plain", "keepalive"): (190, 200), ("ours-policy", "keepalive"): (200, 200),
        ("ours-policy-log", "keepalive"): (220, 220),
    }  # fmt: skip
    for (server, test), per_round in cpu.items():
        for rnd, us in enumerate(per_round):
            row: dict[str, object] = {"server": server, "test": test, "round": rnd, "ok": True}
            row["us_per_op"] = us
            if test == "resumed":
                row["resumed_fraction"] = 1.0
            if server.startswith("ours-policy"):  # the timed access-log call (accesstimer)
                row["access_log_us_per_call"] = 25.0 if server.endswith("-log") else 5.0
            rows.append(row)
    for rnd in range(2):
        rows.append({"server": "ours", "test": "rss", "round": rnd, "ok": True, "rss_mib": 40.0})
        rows.append({"server": "plain", "test": "rss", "round": rnd, "ok": True, "rss_mib": 30.5})
        rows.append(
            {"server": "ours", "test": "keepalive", "round": rnd, "ok": True,
             "us_per_op": 250, "busiest_share": 0.55}
        )  # fmt: skip
    # a failed measurement is never counted
    rows.append({"server": "nginx", "test": "new", "round": 2, "ok": False, "us_per_op": 1})
    rows.append(
        {"server": "ours", "test": "stalled", "round": 1, "ok": True, "stalled": 1000,
         "probes": 5, "latency_s": 0.05, "max_latency_s": 0.08, "errors": []}
    )  # fmt: skip
    return rows


def test_targets_from_canned_numbers() -> None:
    got = {t.number: (round(t.value or 0, 4), t.met) for t in report.targets(_rows())}
    assert got == {
        "1a": (0.5, False),  # 1050 / 2100
        "1b": (0.9, True),  # 1350 / 1500
        "2a": (0.975, True),  # 195 / 200
        "2b": (round(20 * 257 / 195, 4), False),  # (25 - 5) us at the issue's 257 us plain
        "3a": (round(1000 / 2100, 4), True),
        "3b": (1.0, True),
        "4": (9.5, False),  # 40 - 30.5 MiB
        "5": (0.55, True),
        "6": (0.05, True),  # seconds, under 1,000 stalled connections
    }
    per_round = {t.number: t.per_round for t in report.targets(_rows())}
    assert per_round["1a"] == report.Spread(0.5, 0.5, 0.5, 2)


def test_missing_measurements_are_reported_as_not_measured() -> None:
    t = {t.number: t for t in report.targets([])}["1a"]
    assert (t.value, t.met, t.verdict) == (None, None, "not measured")


def test_results_markdown_from_canned_numbers() -> None:
    servers = [("ours", "ours"), ("nginx", "nginx"), ("plain", "plain")]
    meta = {
        "title_note": "canned",
        "commands": {"server nginx": "nginx -c x"},
        "versions": {"openssl": "OpenSSL 3"},
        "notes": ["a note"],
    }
    md = report.render_markdown(_rows(), servers, meta)
    assert "| new mTLS connection + 1 request (plain: TCP) | 2,100 (2,000-2,200) | 1,050" in md
    assert "| 1a | new connection + request: CPU efficiency vs nginx | >= 0.75x | 0.50x" in md
    assert md.count("**missed**") == 3  # 1a, 2b, 4
    assert "| worker RSS after load (mean per worker) | 40.0 MiB | - | 30.5 MiB |" in md
    assert "1000 stalled connections held, worst of 5 requests 0.080 s." in md
    for line in ("nginx -c x", "- openssl: OpenSSL 3", "- a note"):
        assert line in md


def test_target_margin_is_oriented_so_one_is_the_goal() -> None:
    at_least = report.Target("x", "x", "x", ">=", 0.5, "x", 1.0, None, "")
    at_most = report.Target("y", "y", "y", "<=", 10.0, "", 20.0, None, "")
    assert (at_least.margin, at_most.margin) == (2.0, 0.5)


def test_slices_of_a_round_add_up_and_the_worst_slice_sets_the_spread() -> None:
    def one(ops: int, by_pid: dict[str, int], user: float, system: float) -> Sample:
        result = clients.LoadResult(ops=ops, wall_s=1.0, by_pid=Counter(by_pid))
        return Sample(result, "client", user, system, {7: user + system}, pids_changed=False)

    ours = Server("ours", "ours", "ours")
    row = row_from(
        ours,
        "keepalive",
        [one(100, {"7": 50, "8": 50}, 0.03, 0.01), one(300, {"7": 240, "8": 60}, 0.05, 0.01)],
    )
    assert (row["ops"], row["slices"], row["ok"]) == (400, 2, True)
    assert round(row["us_per_op"], 6) == 250.0  # 0.1 s of CPU over 400 requests
    assert round(row["kernel_share"], 6) == 0.2
    assert row["busiest_share"] == 0.8  # the second slice's 240 of 300, not the total's 290/400
    assert row["cpu_by_process"] == {"7": 0.1}


def test_the_access_log_target_is_the_timed_call_at_the_issues_scale() -> None:
    """Twice as slow a machine (plain 514 us, the call 2x) reads the same 2b as the issue's."""
    rows: list[dict[str, object]] = []
    for scale in (1, 2):
        rnd = scale - 1
        rows += [
            {"server": "plain", "test": "keepalive", "round": rnd, "ok": True,
             "us_per_op": 257.0 * scale},
            {"server": "ours-policy", "test": "keepalive", "round": rnd, "ok": True,
             "us_per_op": 300.0 * scale, "access_log_us_per_call": 3.0 * scale},
            {"server": "ours-policy-log", "test": "keepalive", "round": rnd, "ok": True,
             # the whole-server figure is ignored: it cannot resolve the log (accesstimer)
             "us_per_op": 100.0, "access_log_us_per_call": 17.0 * scale},
        ]  # fmt: skip
    value, per_round = report.access_log_at_issue_scale(rows)
    assert value is not None
    assert round(value, 6) == 14.0
    assert per_round == report.Spread(14.0, 14.0, 14.0, 2)
    t = {t.number: t for t in report.targets(rows)}["2b"]
    assert t.met is True
    # no timed call in the rows (an old results.jsonl): not measured, never a guess
    for r in rows:
        r.pop("access_log_us_per_call", None)
    assert report.access_log_at_issue_scale(rows)[0] is None


def test_access_timer_adds_each_calls_thread_cpu_to_the_workers_file(tmp_path: Path) -> None:
    """The worker side (install's wrapper) and the bench side (read) of the shared totals."""
    totals = accesstimer.Totals(tmp_path / "4242")
    calls: list[tuple[object, ...]] = []

    def access(*args: object) -> None:
        calls.append(args)
        sum(i * i for i in range(20_000))  # some CPU the thread clock must see
        if len(calls) == 3:
            raise RuntimeError("a failing call is still counted")

    timed = accesstimer.timed(access, totals)
    timed(1, 2)
    timed(3, 4)
    with pytest.raises(RuntimeError):
        timed(5, 6)
    assert calls == [(1, 2), (3, 4), (5, 6)]
    (tmp_path / "4243").write_bytes(b"")  # a worker that has not written yet
    n, ns = accesstimer.read(tmp_path)
    assert n == 3
    assert ns > 0
    assert accesstimer.read(tmp_path / "absent") == (0, 0)


def test_access_timer_wraps_the_workers_logger_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Log:
        def access(self, *args: object) -> str:
            return "logged"

    class Worker:
        log = Log()

    monkeypatch.delenv(accesstimer.DIR_ENV, raising=False)
    worker = Worker()
    accesstimer.install(worker)
    assert "access" not in vars(worker.log)  # untouched: no timer, no file
    monkeypatch.setenv(accesstimer.DIR_ENV, str(tmp_path))
    accesstimer.install(worker)
    assert worker.log.access("r") == "logged"
    assert accesstimer.read(tmp_path)[0] == 1


def test_rss_flatness_compares_the_soak_with_its_own_reading_before_it() -> None:
    """Not the round's reading: the resume and stalled checks ran on ours in between."""

    def rss(test: str, mib: float, served: int) -> dict[str, object]:
        return {"server": "ours", "test": test, "round": 0, "ok": True, "rss_mib": mib,
                "requests_so_far": served}  # fmt: skip

    round_end = rss("rss", 39.7, 863)
    presoak = rss("rss-presoak", 44.2, 863)  # after 1,000 stalled connections, no request
    flatness = [n for n in _notes([round_end, presoak, rss("rss-soak", 44.3, 100_863)])
                if n.startswith("ours RSS flatness")]  # fmt: skip
    assert flatness == [
        "ours RSS flatness: 44.2 MiB after 863 operations, 44.3 MiB after 100,863 (+0.10 MiB)."
    ]
    # --quick: no soak requests, so no growth to put down to them
    quick = _notes([round_end, presoak, rss("rss-soak", 44.2, 863)])
    assert not [n for n in quick if n.startswith("ours RSS flatness")]
