"""gunicorn server hooks: build the TLS state in the master, hand it to each worker.

mtls.gunicorn_conf assigns these; they are the only glue between gunicorn's
process model and mtls.serverstate. The state is built before the first fork
(with the listener context whose session-ticket key every worker shares,
mtls.tls.ListenerContexts) and rebuilt when the files change or on SIGHUP;
a state that does not validate never replaces a good one.

Two ways a new state reaches the workers:
- the files changed (the watcher): the master validates them and hands
  the same bytes to the running workers (mtls.statechannel), which swap
  them in for new connections. No worker restarts, the app is not
  imported again, session tickets stay valid. Only what
  mtls.serverstate.needs_new_workers names (a changed trust bundle) takes
  new workers instead, by SIGHUP.
- SIGHUP (an operator, `systemctl reload`): gunicorn's full reload, new
  workers that import the app again, with whatever files are valid then.

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
from mtls.balance import ConnectionTable
from mtls.errors import MtlsError
from mtls.forkquiet import fork_quiet
from mtls.health import Status, assess
from mtls.reloadstatus import ReloadStatus
from mtls.serverstate import (
    FileSet,
    TlsState,
    files_fingerprint,
    load_tls_state,
    needs_new_workers,
    read_files,
)
from mtls.settings import ServerSettings
from mtls.statechannel import StateChannel, TooLarge
from mtls.tls import ListenerContexts
from mtls.worker import MtlsWorker

_STATE = "mtls_state"
_LISTENER = "mtls_listener"
_CHANNEL = "mtls_channel"
_BALANCE = "mtls_balance"
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
    # Before any thread or fork: cryptography (pyo3) makes some of its
    # interned names on first use, under a once-lock; a fork while the
    # watcher or the metrics thread was making one left the worker waiting
    # on it forever (seen: a worker stuck at boot in its first
    # Certificate.serial_number). Made here, in the only thread, they exist
    # before either starts; both threads' own reads are then done under
    # fork_quiet() (mtls.forkquiet), which every fork waits for.
    assess(state, None, datetime.datetime.now(datetime.UTC))
    setattr(server, _STATE, state)
    setattr(server, _LISTENER, ListenerContexts(state.settings, state.context))
    setattr(server, _CHANNEL, StateChannel())
    setattr(server, _BALANCE, ConnectionTable())
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
    channel: StateChannel = getattr(server, _CHANNEL)
    worker.tls_state = getattr(server, _STATE)
    worker.listener = getattr(server, _LISTENER)
    worker.channel = channel
    worker.generation = channel.generation  # what the state above already holds
    worker.reload_status = getattr(server, _RELOADS)
    # The worker being forked is not in server.WORKERS yet (gunicorn adds it after the fork).
    if getattr(server.cfg, "reuse_port", False):
        # Each worker has its own listening socket (SO_REUSEPORT): a connection
        # the kernel queued on this one waits for this one, so deferring it to
        # a lighter worker only delays it, as long as that one keeps accepting.
        return
    table: ConnectionTable = getattr(server, _BALANCE)
    worker.balance = table
    worker.balance_slot = table.assign(
        getattr(w, "balance_slot", None) for w in server.WORKERS.values()
    )


def post_fork(server: Any, worker: Any) -> None:
    """In the new worker: the master's metrics socket is not the worker's to hold."""
    listener = getattr(server, _METRICS, None)
    if listener is not None:
        listener.socket.close()


def child_exit(server: Any, worker: Any) -> None:
    metrics.worker_exited(worker.pid)
    slot = getattr(worker, "balance_slot", None)
    if slot is not None:  # killed, it could not leave the table itself
        getattr(server, _BALANCE).clear(slot)


def on_exit(server: Any) -> None:
    directory = getattr(server, _METRICS_DIR, None)
    if directory is not None:
        metrics.remove_multiprocess_dir(directory)


def _current(server: Any) -> tuple[TlsState, ReloadStatus]:
    return getattr(server, _STATE), getattr(server, _RELOADS)


def on_reload(server: Any) -> None:
    """SIGHUP: gunicorn's new workers get the files valid now, or keep the old state.

    gunicorn replaces every worker on SIGHUP whatever this hook decides (the
    watcher sends one only for a change that needs new workers). The new
    workers keep the listener context, and so every session ticket, unless
    the change is one that must end old sessions (needs_new_workers).
    """
    with fork_quiet():  # never interleaved with the watcher's load (hostile review)
        _reload_for_new_workers(server)


def _reload_for_new_workers(server: Any) -> None:
    loaded = _try_load(server)
    if loaded is None:
        return
    new, _ = loaded
    _adopt(server, new, "reloaded")


def _reload_running_workers(server: Any) -> None:
    """The watcher saw the files change: swap a valid new set into the running workers.

    Called under fork_quiet(). The state is published to the workers
    (mtls.statechannel) and becomes the master's, for workers forked later;
    a change that needs new workers is left to SIGHUP (on_reload loads it
    again there, with whatever the files hold by then).
    """
    loaded = _try_load(server)
    if loaded is None:
        return
    new, files = loaded
    old: TlsState = getattr(server, _STATE)
    why = needs_new_workers(old, new)
    if why is None:
        try:
            generation = getattr(server, _CHANNEL).publish(files.ordered(new.settings))
        except TooLarge as e:
            why = str(e)
        else:
            _adopt(server, new, f"reloaded in place (generation {generation})")
            return
    server.log.info("mTLS: replacing the workers for the new TLS files: %s", why)
    os.kill(os.getpid(), signal.SIGHUP)


def _adopt(server: Any, new: TlsState, verb: str) -> None:
    """Make ``new`` the master's state: for the workers forked from now on, and the listener's.

    The one rule for both reload paths, under fork_quiet(): the listener keeps its
    session context (every worker's session-ticket key) and only moves its
    handshakes to the new context, unless the change must end the old
    sessions (needs_new_workers), which takes a new listener and so a new key.
    """
    old: TlsState = getattr(server, _STATE)
    if needs_new_workers(old, new) is None:
        getattr(server, _LISTENER).current = new.context
    else:
        setattr(server, _LISTENER, ListenerContexts(new.settings, new.context))
    setattr(server, _STATE, new)
    _log_state(server, new, verb)


def _try_load(server: Any) -> tuple[TlsState, FileSet] | None:
    """The new state (and its bytes) if the files load and differ from the state in use.

    None otherwise, logged, and recorded for /healthz and the metrics.
    """
    old: TlsState = getattr(server, _STATE)
    reloads: ReloadStatus = getattr(server, _RELOADS)
    try:
        settings = ServerSettings.from_env()
        files = read_files(settings)
        new = load_tls_state(settings, previous=old, files=files)
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
    return new, files


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
        f"{state.leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC",  # hours count for 24 h certs
        settings.client_auth,
        settings.ca_certs,
        settings.crlfile or "none",
        settings.proxy_protocol,
    )
    for warning in state.warnings:
        server.log.warning("mTLS: %s", warning)


def _watch(server: Any, interval: float) -> None:
    """The master's watcher thread: file changes -> reload; health -> warnings before the cliff.

    A change is loaded once the files have stood still for one interval: a
    renewal renames the key and the certificate one after the other, and a
    poll between the two would refuse the mix with an ERROR (and a moved
    mtls_reload_failures_total) for what is no fault at all. It is loaded
    here first, under fork_quiet() (no fork meanwhile); one that loads and
    differs is swapped into the running workers, and a refused or merely
    touched set changes nothing: whoever can write the CRL file cannot
    recycle every worker with junk. It never ends on an
    exception (a watcher that died would leave rotations unnoticed without
    a word), and ends with the master (a daemon thread).
    """
    last = files_fingerprint(getattr(server, _STATE).settings)
    settling = False
    reported: tuple[Status, tuple[str, ...]] = ("ok", ())
    reminded = 0.0
    while True:
        try:
            if interval > 0:
                current = files_fingerprint(getattr(server, _STATE).settings)
                if current != last:
                    last, settling = current, True  # still being written, maybe
                elif settling:
                    settling = False
                    with fork_quiet():
                        _reload_running_workers(server)
            with fork_quiet():  # no fork in the middle of cryptography's calls
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
