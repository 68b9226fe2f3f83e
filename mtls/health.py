"""Whether a server is healthy, judged on its TLS state and the clock (pure).

The same answer on both listeners (the services' /healthz and the metrics
port's): ``fail`` when this server would refuse every client or serve an
expired certificate (so a load balancer takes it out), ``warn`` while it
still serves but the cliff is near (the certificate has under 7 days left,
MTLS_CERT_WARN: 8h suits 24 h certificates renewed every 8 h,
or the CRL under a quarter of its lifetime: the job that re-signs it has
missed a run), else ``ok``. HTTP 200 for ok and warn, 503 for fail.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from mtls.identity import format_serial
from mtls.reloadstatus import ReloadSnapshot, ReloadStatus
from mtls.serverstate import TlsState

Status = Literal["ok", "warn", "fail"]
# Set by the worker in every request's environ, for the services' /healthz.
STATE_ENVIRON_KEY = "mtls.state"
RELOADS_ENVIRON_KEY = "mtls.reloads"
CRL_WARN_FRACTION = 0.25


@dataclass(frozen=True)
class Health:
    status: Status
    problems: tuple[str, ...]
    body: dict[str, Any]

    @property
    def http_status(self) -> int:
        return 503 if self.status == "fail" else 200


def assess(
    state: TlsState | None, reloads: ReloadSnapshot | None, now: datetime.datetime
) -> Health:
    if state is None:
        return Health("fail", ("no valid TLS state",), {"status": "fail"})
    problems: list[str] = []
    fail = warn = False
    leaf = state.leaf
    left = leaf.not_valid_after_utc - now
    if left <= datetime.timedelta(0):
        fail = True
        problems.append(f"the server certificate expired at {_iso(leaf.not_valid_after_utc)}")
    elif left < datetime.timedelta(seconds=state.settings.cert_warn):
        warn = True
        problems.append(f"the server certificate expires in {_span(left)}")
    next_update = state.crl_next_update
    if next_update is not None:
        crl_left = next_update - now
        lifetime = next_update - state.crl_last_update if state.crl_last_update else None
        if crl_left <= datetime.timedelta(0):
            fail = True
            problems.append(f"the CRL is past its nextUpdate ({_iso(next_update)}): run `pki crl`")
        elif lifetime and crl_left < lifetime * CRL_WARN_FRACTION:
            warn = True
            problems.append(f"the CRL runs out in {_span(crl_left)}: run `pki crl`")
    if reloads is not None and not reloads.last_ok:
        warn = True
        problems.append(f"the last reload was refused: {reloads.message}")
    status: Status = "fail" if fail else "warn" if warn else "ok"
    body: dict[str, Any] = {
        "status": status,
        "problems": problems,
        "serial": format_serial(leaf.serial_number),
        "subject": state.subject_dn,
        "not_after": _iso(leaf.not_valid_after_utc),
        "crl_next_update": _iso(next_update) if next_update else None,
        "reload": None
        if reloads is None
        else {
            "result": "ok" if reloads.last_ok else "refused",
            "at": _iso(_from_unix(reloads.last_attempt)),
            "last_success": _iso(_from_unix(reloads.last_success)),
            "failures": reloads.failures,
        },
    }
    return Health(status, tuple(problems), body)


def from_environ(environ: Mapping[str, Any], now: datetime.datetime | None = None) -> Health | None:
    """The health of the server a request came through, or None when not under our worker."""
    state = environ.get(STATE_ENVIRON_KEY)
    reloads = environ.get(RELOADS_ENVIRON_KEY)
    if state is None:
        return None
    return assess(
        state if isinstance(state, TlsState) else None,
        reloads.snapshot() if isinstance(reloads, ReloadStatus) else None,
        now or datetime.datetime.now(datetime.UTC),
    )


def combine(tls: Health | None, own_ok: bool, own: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """A service's /healthz: the TLS health plus its own check; the worse status wins."""
    body: dict[str, Any] = dict(tls.body) if tls is not None else {"status": "ok"}
    body.update(own)
    if not own_ok:
        body["status"] = "fail"
    return body, 503 if body["status"] == "fail" else 200


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _from_unix(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


def _span(delta: datetime.timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} hours"
