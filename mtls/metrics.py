"""Prometheus metrics, correct across gunicorn's worker processes (multiprocess mode).

Every metric name is defined here once. Workers count handshakes,
resumptions, connections and policy decisions into prometheus_client's
per-process files under PROMETHEUS_MULTIPROC_DIR, which the master creates
fresh at start-up and which outlive every worker, so counts survive worker
restarts and reloads. The master serves them, summed, on MTLS_METRICS_BIND
(mtls.metricsserver), together with facts it knows itself (the server
certificate's notAfter, the CRL's nextUpdate, the reloads), which a
collector reads from the current state at each scrape, so a rotated
certificate's old labels never linger.

prometheus_client decides multiprocess mode when a metric is created, so
nothing here is created at import: ``worker_metrics()`` builds them on first
use in each process, after the master has set the directory. With
MTLS_METRICS_BIND unset nothing is counted at all (``NO_METRICS``).
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any, Protocol

from mtls.forkquiet import fork_quiet
from mtls.identity import format_serial

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Every prometheus_client module used here, imported before the first fork.
_PRELOADED = ("prometheus_client", "prometheus_client.core", "prometheus_client.multiprocess")
_HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Metrics(Protocol):
    def handshake(self, outcome: str, reason: str, seconds: float | None = None) -> None: ...
    def resumed(self) -> None: ...
    def connections(self, delta: int) -> None: ...
    def policy_decision(self, endpoint: str, decision: str, mode: str) -> None: ...


class _NoMetrics:
    """MTLS_METRICS_BIND unset: counting costs nothing."""

    def handshake(self, outcome: str, reason: str, seconds: float | None = None) -> None:
        return None

    def resumed(self) -> None:
        return None

    def connections(self, delta: int) -> None:
        return None

    def policy_decision(self, endpoint: str, decision: str, mode: str) -> None:
        return None


NO_METRICS: Metrics = _NoMetrics()


class _WorkerMetrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self._handshakes = Counter(
            "mtls_handshakes_total",
            "TLS handshakes by outcome; reason is why a connection was refused (none if accepted)",
            ["outcome", "reason"],
        )
        self._resumed = Counter(
            "mtls_sessions_resumed_total", "Accepted handshakes that resumed a TLS session"
        )
        self._duration = Histogram(
            "mtls_handshake_duration_seconds",
            "Accept to verified identity, for accepted handshakes",
            buckets=_HANDSHAKE_BUCKETS,
        )
        self._active = Gauge(
            "mtls_connections_active",
            "Connections held by the workers (handshaking, idle or in a request)",
            multiprocess_mode="livesum",
        )
        self._policy = Counter(
            "mtls_policy_decisions_total",
            "DN/SAN policy decisions; mode=report counts the would-be denials it served",
            ["endpoint", "decision", "mode"],
        )

    def handshake(self, outcome: str, reason: str, seconds: float | None = None) -> None:
        self._handshakes.labels(outcome, reason).inc()
        if seconds is not None:
            self._duration.observe(seconds)

    def resumed(self) -> None:
        self._resumed.inc()

    def connections(self, delta: int) -> None:
        self._active.inc(delta)

    def policy_decision(self, endpoint: str, decision: str, mode: str) -> None:
        self._policy.labels(endpoint, decision, mode).inc()


@functools.cache
def _created() -> Metrics:
    return _WorkerMetrics()


def worker_metrics() -> Metrics:
    """This process's metrics: real where the master enabled them, else NO_METRICS."""
    if not os.environ.get(MULTIPROC_ENV):
        return NO_METRICS
    return _created()


def start_multiprocess_dir() -> str:
    """A fresh directory for this server's per-process files, announced to future workers.

    Called by the master before the first fork. A directory left by an
    earlier run would add its counts to ours, so it is always new. Then
    every prometheus_client module this code uses is imported here, in the
    master's main thread: a module imported for the first time by the
    scrape thread while the arbiter forks leaves its import lock held in
    the child, whose own import then waits forever (seen: a worker stuck
    in init_process until gunicorn's graceful timeout killed it).
    """
    directory = tempfile.mkdtemp(prefix="mtls-metrics-")
    os.environ[MULTIPROC_ENV] = directory  # before the import: it picks the value class
    for module in _PRELOADED:
        importlib.import_module(module)
    return directory


def remove_multiprocess_dir(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def worker_exited(pid: int) -> None:
    """gunicorn's child_exit: a dead worker's live gauges must stop counting."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def exposition(master_facts: Any) -> tuple[bytes, str]:
    """The /metrics body: the workers' metrics summed, plus ``master_facts`` (a collector)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(master_facts)
    return generate_latest(registry), CONTENT_TYPE_LATEST


class MasterFacts:
    """What the master knows, read from its current state at each scrape (a prometheus collector).

    ``source`` is a callable returning (TlsState, ReloadStatus): the hooks
    pass one that reads the server object, so a reload is seen at once.
    """

    def __init__(self, source: Any) -> None:
        self._source = source

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        state, reloads = self._source()
        with fork_quiet():  # cryptography, in the master's scrape thread: mtls.forkquiet
            not_after = state.leaf.not_valid_after_utc.timestamp()
            serial = state.leaf.serial_number
        yield GaugeMetricFamily(
            "mtls_server_cert_not_after_timestamp_seconds",
            "The served certificate's notAfter (Unix time)",
            value=not_after,
        )
        if state.crl_next_update is not None:
            yield GaugeMetricFamily(
                "mtls_crl_next_update_timestamp_seconds",
                "The loaded CRL's nextUpdate (Unix time): every client is refused after it",
                value=state.crl_next_update.timestamp(),
            )
        snapshot = reloads.snapshot()
        yield GaugeMetricFamily(
            "mtls_reload_last_success_timestamp_seconds",
            "When the TLS files in use were loaded (start-up or the last good reload)",
            value=snapshot.last_success,
        )
        yield CounterMetricFamily(
            "mtls_reload_failures_total",
            "Reloads refused (the previous certificates were kept)",
            value=snapshot.failures,
        )
        info = GaugeMetricFamily(
            "mtls_server_cert_info",
            "The served certificate (always 1)",
            labels=["serial", "subject"],
        )
        info.add_metric([format_serial(serial), state.subject_dn], 1)
        yield info
