"""mtls.decisions: counts per app, and the process's metrics asked for once per process."""

from __future__ import annotations

import pytest

from mtls import decisions


class _Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def policy_decision(self, endpoint: str, decision: str, mode: str) -> None:
        self.seen.append((endpoint, decision, mode))


def test_the_metrics_are_looked_up_once_per_process_and_again_after_a_fork(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[_Recorder] = []

    def worker_metrics() -> _Recorder:
        made.append(_Recorder())
        return made[-1]

    monkeypatch.setattr(decisions, "worker_metrics", worker_metrics)
    pid = [1000]
    monkeypatch.setattr("mtls.decisions.os.getpid", lambda: pid[0])
    counts = decisions.DecisionCounts()
    counts.add("users.user", "allow", "enforce")
    counts.add("users.user", "deny", "report")
    pid[0] = 1001  # a worker forked from the process that made the app (preload_app)
    counts.add("users.user", "allow", "enforce")
    assert [r.seen for r in made] == [
        [("users.user", "allow", "enforce"), ("users.user", "deny", "report")],
        [("users.user", "allow", "enforce")],
    ]
    assert counts.snapshot() == {
        ("users.user", "allow", "enforce"): 2,
        ("users.user", "deny", "report"): 1,
    }
