"""gunicorn server hooks: build the TLS state in the master, hand it to each worker.

mtls.gunicorn_conf assigns these; they are the only glue between gunicorn's
process model and mtls.serverstate. The state is built before the first fork
(one session-ticket key for all workers) and rebuilt on SIGHUP or when the
files change; a state that does not validate never replaces a good one.

Nothing raised while loading may reach gunicorn's arbiter: there it is
"Unhandled exception in main loop" and the master exits with its workers.
A reload that fails for any reason keeps the state in use and says why.

With MTLS_METRICS_BIND set, the master also serves /metrics and /healthz
(mtls.metricsserver) and the workers count into a fresh multiprocess
directory. The watcher thread warns before the cliff: the server
certificate or the CRL running out (mtls.health), at start-up, when the
status changes and hourly while it lasts.
"""

from __future__ import annotations

import datetime
import os
import signal
import threading
import time
from typing import Any

from mtls import metrics
from mtls.errors import MtlsError
from mtls.health import Status, assess
from mtls.reloadstatus import ReloadStatus
from mtls.serverstate import TlsState, files_fingerprint, load_tls_state
from mtls.settings import ServerSettings
from mtls.worker import MtlsWorker

_STATE = "mtls_state"
_RELOADS = "mtls_reloads"
_METRICS = "mtls_metrics_server"
_METRICS_DIR = "mtls_metrics_dir"
# While the health is warn or fail, the watcher repeats its line this often.
REMIND_EVERY = 3600.0


def on_starting(server: Any) -> None:
    """Fail fast (the guide's validateCerts): gunicorn prints a RuntimeError as `Error: ...`."""
    worker_class = server.worker_class
    if not (isinstance(worker_class, type) and issubclass(worker_class, MtlsWorker)):
        raise RuntimeError(
            f"worker_class is {server.cfg.worker_class_str}, not mtls.worker.MtlsWorker: "
            "client identity would never reach the app. (gunicorn swaps a class whose name "
            "ends in SyncWorker for its gthread worker when threads > 1.)"
        )
    if str(server.cfg.proxy_protocol).lower() not in ("off", "false", "none"):
        raise RuntimeError(
            "gunicorn's own proxy_protocol must stay off: it reads the PROXY header after "
            "the TLS handshake, which breaks behind a TCP-passthrough balancer. "
            "Use MTLS_PROXY_PROTOCOL (and MTLS_PROXY_ALLOW_FROM) instead."
        )
    try:
        state = load_tls_state(ServerSettings.from_env())
    except MtlsError as e:
        raise RuntimeError(str(e)) from None
    except Exception as e:  # a bug, not a bad file: keep the traceback for the report
        server.log.exception("mTLS: building the TLS state failed unexpectedly")
        raise RuntimeError(
            f"the server's TLS state could not be built ({type(e).__name__}: {e}); "
            "the traceback is in the log above"
        ) from None
    _log_state(server, state, "loaded")
    setattr(server, _STATE, state)
    setattr(server, _RELOADS, ReloadStatus(time.time()))
    bind = state.settings.metrics_bind
    if bind is not None:
        from mtls import metricsserver

        setattr(server, _METRICS_DIR, metrics.start_multiprocess_dir())
        try:
            listener = metricsserver.serve(bind, lambda: _current(server), server.log)
        except OSError as e:
            raise RuntimeError(
                f"MTLS_METRICS_BIND={bind[0]}:{bind[1]} cannot be bound ({e.strerror or e}); "
                "pick a free port"
            ) from None
        setattr(server, _METRICS, listener)
        server.log.info("mTLS metrics and health on http://%s:%d/metrics", *bind)


def when_ready(server: Any) -> None:
    state: TlsState = getattr(server, _STATE)
    watcher = threading.Thread(
        target=_watch,
        args=(server, state.settings.reload_interval),
        name="mtls-watcher",
        daemon=True,
    )
    watcher.start()


def pre_fork(server: Any, worker: Any) -> None:
    worker.tls_state = getattr(server, _STATE)
    worker.reload_status = getattr(server, _RELOADS)


def post_fork(server: Any, worker: Any) -> None:
    """In the new worker: the master's metrics socket is not the worker's to hold."""
    listener = getattr(server, _METRICS, None)
    if listener is not None:
        listener.socket.close()


def child_exit(server: Any, worker: Any) -> None:
    metrics.worker_exited(worker.pid)


def on_exit(server: Any) -> None:
    directory = getattr(server, _METRICS_DIR, None)
    if directory is not None:
        metrics.remove_multiprocess_dir(directory)


def _current(server: Any) -> tuple[TlsState, ReloadStatus]:
    return getattr(server, _STATE), getattr(server, _RELOADS)


def on_reload(server: Any) -> None:
    """SIGHUP (from the watcher, for a set it validated, or from an operator): swap it in.

    gunicorn replaces every worker on SIGHUP whatever this hook decides, so
    the watcher sends one only for a set that loads and differs; an
    operator's SIGHUP with a refused or unchanged set still recycles them.
    """
    new = _try_load(server)
    if new is not None:
        setattr(server, _STATE, new)
        _log_state(server, new, "reloaded")


def _try_load(server: Any) -> TlsState | None:
    """The new state if the files load and differ from the one in use; None otherwise (logged)."""
    old: TlsState = getattr(server, _STATE)
    reloads: ReloadStatus = getattr(server, _RELOADS)
    try:
        new = load_tls_state(ServerSettings.from_env(), previous=old)
    except MtlsError as e:
        message = _one_line(str(e))
        reloads.failed(time.time(), message)
        server.log.error("TLS reload refused, keeping the previous certificates: %s", message)
        return None
    except Exception as e:  # a bug, not a bad file: the traceback, and the server stays up
        reloads.failed(time.time(), f"unexpected {type(e).__name__}: {e}")
        server.log.exception("TLS reload failed unexpectedly, keeping the previous certificates")
        return None
    reloads.succeeded(time.time())
    if new.fingerprint == old.fingerprint and new.settings == old.settings:
        # Same files: keep the context, so outstanding session tickets stay valid.
        server.log.info("TLS files unchanged; keeping the current context")
        return None
    return new


# The watcher loads files (OpenSSL, cryptography) in its own thread; a fork at
# that moment would hand the worker OpenSSL's locks held, and it would hang as
# a worker once did on an import lock. Every fork of this process waits for a
# load in progress, and no load starts during a fork.
_LOADING = threading.Lock()
os.register_at_fork(
    before=_LOADING.acquire, after_in_parent=_LOADING.release, after_in_child=_LOADING.release
)


def _one_line(message: str) -> str:
    """A multi-problem message as one log line: `a: | b | c`."""
    return " | ".join(part.strip().removeprefix("- ") for part in message.splitlines())


def _log_state(server: Any, state: TlsState, verb: str) -> None:
    from mtls.dn import format_dn

    settings = state.settings
    server.log.info(
        "mTLS %s: cert=%s (%s, until %s) client_auth=%s trust=%s crl=%s proxy_protocol=%s",
        verb,
        settings.certfile,
        format_dn(state.leaf.subject),
        f"{state.leaf.not_valid_after_utc:%Y-%m-%d}",
        settings.client_auth,
        settings.ca_certs,
        settings.crlfile or "none",
        settings.proxy_protocol,
    )
    for warning in state.warnings:
        server.log.warning("mTLS: %s", warning)


def _watch(server: Any, interval: float) -> None:
    """The master's watcher thread: file changes -> reload; health -> warnings before the cliff.

    A changed set is loaded here first, under _LOADING (no fork meanwhile),
    and only one that loads and differs is announced with SIGHUP, so a
    refused or merely touched set restarts no worker: whoever can write the
    CRL file cannot recycle every worker with junk. It never ends on an
    exception (a watcher that died would leave rotations unnoticed without
    a word), and ends with the master (a daemon thread).
    """
    last = files_fingerprint(getattr(server, _STATE).settings)
    reported: tuple[Status, tuple[str, ...]] = ("ok", ())
    reminded = 0.0
    while True:
        try:
            if interval > 0:
                current = files_fingerprint(getattr(server, _STATE).settings)
                if current != last:
                    last = current
                    with _LOADING:
                        valid_and_new = _try_load(server) is not None
                    if valid_and_new:
                        os.kill(os.getpid(), signal.SIGHUP)
            health = assess(*_snapshot(server), datetime.datetime.now(datetime.UTC))
            now = time.monotonic()
            if (health.status, health.problems) != reported or (
                health.status != "ok" and now - reminded >= REMIND_EVERY
            ):
                _log_health(server, health.status, health.problems)
                reported, reminded = (health.status, health.problems), now
        except Exception:
            server.log.exception("mTLS watcher: a check failed; still watching")
        time.sleep(interval if interval > 0 else 10.0)


def _snapshot(server: Any) -> tuple[TlsState, Any]:
    state, reloads = _current(server)
    return state, reloads.snapshot()


def _log_health(server: Any, status: Status, problems: tuple[str, ...]) -> None:
    if status == "ok":
        server.log.info("mTLS health: ok")
        return
    log = server.log.error if status == "fail" else server.log.warning
    log("mTLS health %s: %s", status, "; ".join(problems))
