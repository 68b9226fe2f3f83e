"""gunicorn server hooks: build the TLS state in the master, hand it to each worker.

mtls.gunicorn_conf assigns these; they are the only glue between gunicorn's
process model and mtls.context. The state is built before the first fork
(one session-ticket key for all workers) and rebuilt on SIGHUP or when the
files change; a state that does not validate never replaces a good one.

Nothing raised while loading may reach gunicorn's arbiter: there it is
"Unhandled exception in main loop" and the master exits with its workers.
A reload that fails for any reason keeps the state in use and says why.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from mtls.errors import MtlsError
from mtls.serverstate import TlsState, files_fingerprint, load_tls_state
from mtls.settings import ServerSettings
from mtls.worker import MtlsWorker

_STATE = "mtls_state"


def on_starting(server: Any) -> None:
    """Fail fast (the seed's validateCerts): gunicorn prints a RuntimeError as `Error: ...`."""
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


def when_ready(server: Any) -> None:
    state: TlsState = getattr(server, _STATE)
    interval = state.settings.reload_interval
    if interval > 0:
        watcher = threading.Thread(
            target=_watch_files, args=(server, interval), name="mtls-file-watcher", daemon=True
        )
        watcher.start()


def pre_fork(server: Any, worker: Any) -> None:
    worker.tls_state = getattr(server, _STATE)


def on_reload(server: Any) -> None:
    """SIGHUP (sent by the watcher, or by an operator): swap in a new state if it validates."""
    old: TlsState = getattr(server, _STATE)
    try:
        new = load_tls_state(ServerSettings.from_env(), previous=old)
    except MtlsError as e:
        server.log.error(
            "TLS reload refused, keeping the previous certificates: %s", _one_line(str(e))
        )
        return
    except Exception:  # a bug, not a bad file: the traceback, and the server stays up
        server.log.exception("TLS reload failed unexpectedly, keeping the previous certificates")
        return
    if new.fingerprint == old.fingerprint and new.settings == old.settings:
        # Same files: keep the context, so outstanding session tickets stay valid.
        server.log.info("TLS files unchanged; keeping the current context")
        return
    setattr(server, _STATE, new)
    _log_state(server, new, "reloaded")


def _one_line(message: str) -> str:
    """A multi-problem message as one log line: `a: | b | c`."""
    return " | ".join(part.strip().removeprefix("- ") for part in message.splitlines())


def _log_state(server: Any, state: TlsState, verb: str) -> None:
    from mtls.identity import format_dn

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


def _watch_files(server: Any, interval: float) -> None:
    """Poll the files' inode/size/mtime; on a change, ask the master to reload.

    Only os.stat runs here: validation and the new context are built by the
    master's own thread in on_reload, so no OpenSSL lock is ever held by this
    thread when the master forks. The thread never ends on an exception: a
    watcher that died would leave rotations unnoticed without a word.
    """
    stop = threading.Event()
    last = files_fingerprint(getattr(server, _STATE).settings)
    while not stop.wait(interval):
        try:
            current = files_fingerprint(getattr(server, _STATE).settings)
            if current != last:
                last = current
                os.kill(os.getpid(), signal.SIGHUP)
        except Exception:
            server.log.exception("mTLS file watcher: checking the files failed; still watching")
