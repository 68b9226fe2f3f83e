"""Counted policy decisions, per app and in Prometheus: what report mode is for."""

from __future__ import annotations

import collections
import os
import threading
from typing import Any

from mtls.metrics import Metrics, worker_metrics

_COUNTS = "mtls.decisions"


class DecisionCounts:
    """Policy decisions per (endpoint, decision, mode), for one app; thread-safe.

    ``decision`` is ``allow`` or ``deny`` (in report mode, a served would-be
    denial); one count per check, so a request through a policed blueprint
    and a policed view counts twice. Each is also counted in Prometheus'
    ``mtls_policy_decisions_total`` when metrics are on (mtls.metrics).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        # worker_metrics() reads os.environ (~2 us, on every policed request):
        # asked once per process instead. Per process, because an app made
        # before the fork (preload_app) counts in each worker's own files.
        self._metrics: tuple[int, Metrics] | None = None

    def add(self, endpoint: str, decision: str, mode: str) -> None:
        with self._lock:
            self._counts[endpoint, decision, mode] += 1
        self._process_metrics().policy_decision(endpoint, decision, mode)

    def _process_metrics(self) -> Metrics:
        pid = os.getpid()
        known = self._metrics
        if known is None or known[0] != pid:
            known = self._metrics = (pid, worker_metrics())
        return known[1]

    def snapshot(self) -> dict[tuple[str, str, str], int]:
        with self._lock:
            return dict(self._counts)


def decision_counts(app: Any) -> DecisionCounts:
    counts = app.extensions.get(_COUNTS)
    if not isinstance(counts, DecisionCounts):
        counts = app.extensions[_COUNTS] = DecisionCounts()
    return counts
