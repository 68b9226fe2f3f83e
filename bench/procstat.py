"""Server CPU time and memory from /proc (proc(5)), for a whole process tree.

CPU per operation is read from the kernel's accounting of the server's own
processes (utime + stime of the master and every worker), not from the
client's wall clock: on a shared 2-core machine a client that is descheduled
makes throughput noisy, while the CPU the server spent per request stays put.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Stat:
    """The fields of /proc/<pid>/stat that the bench uses."""

    pid: int
    ppid: int
    utime_ticks: int
    stime_ticks: int

    @property
    def cpu_seconds(self) -> float:
        return (self.utime_ticks + self.stime_ticks) / CLOCK_TICKS


def parse_stat(text: str) -> Stat:
    """Parse one /proc/<pid>/stat line.

    The command name (field 2) is in parentheses and may itself hold spaces
    or ')', so fields are counted from the LAST ')': after it come state (3),
    ppid (4) ... utime (14), stime (15), numbered as in proc(5).
    """
    close = text.rindex(")")
    pid = int(text[: text.index("(")].strip())
    rest = text[close + 2 :].split()
    return Stat(pid=pid, ppid=int(rest[1]), utime_ticks=int(rest[11]), stime_ticks=int(rest[12]))


def read_stat(pid: int, proc: Path = PROC) -> Stat | None:
    """The process's Stat, or None when it has gone (it may exit between listing and reading)."""
    try:
        return parse_stat((proc / str(pid) / "stat").read_text())
    except (OSError, ValueError):
        return None


def all_stats(proc: Path = PROC) -> dict[int, Stat]:
    out: dict[int, Stat] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            st = read_stat(int(entry.name), proc)
            if st is not None:
                out[st.pid] = st
    return out


def tree(root: int, stats: Mapping[int, Stat]) -> list[int]:
    """root and all its descendants (gunicorn: master + workers; nginx: master + worker)."""
    children: dict[int, list[int]] = {}
    for st in stats.values():
        children.setdefault(st.ppid, []).append(st.pid)
    out: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            out.append(pid)
            todo.extend(children.get(pid, ()))
    return sorted(out)


def cpu_by_pid(root: int, proc: Path = PROC) -> dict[int, float]:
    """CPU seconds so far of every live process in root's tree."""
    stats = all_stats(proc)
    return {pid: stats[pid].cpu_seconds for pid in tree(root, stats)}


def user_system(root: int, proc: Path = PROC) -> tuple[float, float]:
    """utime and stime seconds so far, summed over root's tree (user code vs the kernel)."""
    stats = all_stats(proc)
    pids = tree(root, stats)
    return (
        sum(stats[p].utime_ticks for p in pids) / CLOCK_TICKS,
        sum(stats[p].stime_ticks for p in pids) / CLOCK_TICKS,
    )


def cpu_delta(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    """CPU spent between two cpu_by_pid snapshots.

    A process that appears only in `after` (a restarted worker) counts from
    zero; one that vanished is lost, which is why the caller records whether
    the pid set changed and marks such a round.
    """
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def parse_rss_kib(status_text: str) -> int:
    """VmRSS from /proc/<pid>/status, in KiB (proc(5): 'VmRSS:  1234 kB')."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError("no VmRSS line: a kernel thread or a zombie has no resident set")


def rss_kib(pids: Iterable[int], proc: Path = PROC) -> dict[int, int]:
    out: dict[int, int] = {}
    for pid in pids:
        try:
            out[pid] = parse_rss_kib((proc / str(pid) / "status").read_text())
        except (OSError, ValueError):
            continue
    return out
