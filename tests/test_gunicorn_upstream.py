"""The gthread methods MtlsWorker overrides are the ones it was written against.

mtls.worker keeps gthread's pool and event loop and overrides thirteen of
its methods; some extend gthread's (super()), one is a copy with two
insertions (wait_for_and_dispatch_events: gthread has no hook between the
poller's select and the dispatch), and all of them assume gthread's
attributes and call order. setup.cfg admits any gunicorn 27.x, so a minor
release could change one of them under us: a fix to gthread's keep-alive
handling that our copy would silently lack, or an attribute we read gone.
This test makes that a failure naming the method to re-read, not a quiet
divergence. When it fails: read gunicorn's new ThreadWorker.<name> against
MtlsWorker.<name>, carry over what changed, run the suite, then record the
new digest here. The same holds for the other gunicorn classes mtls subclasses
(gthread.TConn: MtlsConn; glogging.Logger: MtlsLogger) and for the atoms and
SafeAtoms rules mtls.accesslog computes itself.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import pkgutil

from gunicorn import glogging
from gunicorn.workers import gthread

import mtls
from mtls.logs import MtlsLogger
from mtls.serverconn import MtlsConn
from mtls.worker import MtlsWorker

#: sha256 of inspect.getsource(gthread.ThreadWorker.<name>), first 16 digits; gunicorn 27.0.1
READ_AGAINST = {
    "__init__": "5681b8b542ea91bf",
    "accept": "f8dcead3dce5c851",
    "finish_request": "616e7bb15a009ff7",
    "handle": "ca85c9be3df75da4",
    "handle_quit": "36bd35a8dae5d2b5",
    "handle_request": "6d0de5b919102efc",
    "init_process": "e4fc63a1a68e4f48",
    "load_wsgi": "18b02fc35e964f2b",
    "murder_keepalived": "4459960c4ccc36d4",
    "murder_pending": "7bf11f46454296e1",
    "run": "f92c7394d85715a4",
    "set_accept_enabled": "140150ebfd3cae34",
    "wait_for_and_dispatch_events": "ea969b352482bd5c",
}


#: the other gunicorn classes mtls subclasses: what each override was written against
#: (gunicorn 27.0.1). TConn.init is where gthread wraps the socket in TLS; Logger.access
#: and setup are what mtls.logs' fast access path stands in for.
OTHER_CLASSES: dict[type, tuple[type, dict[str, str]]] = {
    MtlsConn: (gthread.TConn, {"__init__": "c8763d7c65974e1b", "init": "5ff3d4ba451cfdf3",
                               "close": "6d1c334ed1979fcb"}),
    MtlsLogger: (glogging.Logger, {"access": "45fce61c353b69b2", "setup": "17c79acdddea07c6"}),
}  # fmt: skip
#: what mtls.accesslog computes itself instead of calling: gunicorn's atoms and their
#: lookup rules (an atom added or a rule changed upstream would be missing from our line)
REIMPLEMENTED = {
    "Logger.atoms": (glogging.Logger.atoms, "01225e5e5f3ce6c2"),
    "SafeAtoms": (glogging.SafeAtoms, "e5c47bcd02edafd2"),
}


def _digest(source_of: object) -> str:
    return hashlib.sha256(inspect.getsource(source_of).encode()).hexdigest()[:16]  # type: ignore[arg-type]


def overrides(ours: type, theirs: type) -> list[str]:
    return sorted(
        name for name, value in vars(ours).items() if callable(value) and hasattr(theirs, name)
    )


def overridden() -> list[str]:
    return overrides(MtlsWorker, gthread.ThreadWorker)


def test_every_overridden_gthread_method_is_the_one_mtls_worker_was_written_against() -> None:
    changed = [
        name
        for name in overridden()
        if name in READ_AGAINST
        and hashlib.sha256(inspect.getsource(getattr(gthread.ThreadWorker, name)).encode())
        .hexdigest()[:16] != READ_AGAINST[name]
    ]  # fmt: skip
    assert not changed, (
        f"gunicorn's gthread.ThreadWorker changed {changed} since mtls.worker was written "
        "against it: re-read each against MtlsWorker's, carry the change over, then record "
        "the new digests in tests/test_gunicorn_upstream.py"
    )


def test_a_new_override_is_recorded_here_too() -> None:
    assert sorted(READ_AGAINST) == overridden(), (
        "MtlsWorker overrides a different set of gthread methods than this test records: "
        "add the new one's digest (or drop the removed one's)"
    )


def test_every_gunicorn_class_mtls_subclasses_has_its_overrides_recorded() -> None:
    """Not only the worker: a subclass of any gunicorn class, in any mtls module."""
    recorded = {MtlsWorker: (gthread.ThreadWorker, READ_AGAINST), **OTHER_CLASSES}
    found = {}
    for module in pkgutil.iter_modules(mtls.__path__):
        for value in vars(importlib.import_module(f"mtls.{module.name}")).values():
            if not inspect.isclass(value) or not value.__module__.startswith("mtls."):
                continue
            theirs = next(
                (b for b in value.__mro__[1:] if b.__module__.startswith("gunicorn")), None
            )
            if theirs is not None and overrides(value, theirs):
                found[value] = (theirs, overrides(value, theirs))
    assert found == {ours: (theirs, sorted(pins)) for ours, (theirs, pins) in recorded.items()}


def test_the_other_gunicorn_code_mtls_overrides_or_reimplements_is_unchanged() -> None:
    pinned = [
        (f"{theirs.__name__}.{name}", getattr(theirs, name), digest)
        for theirs, pins in OTHER_CLASSES.values()
        for name, digest in pins.items()
    ] + [(name, code, digest) for name, (code, digest) in REIMPLEMENTED.items()]
    changed = [name for name, code, digest in pinned if _digest(code) != digest]
    assert not changed, (
        f"gunicorn changed {changed} since mtls was written against it: re-read each against "
        "ours (mtls.serverconn, mtls.logs, mtls.accesslog), carry the change over, then record "
        "the new digests in tests/test_gunicorn_upstream.py"
    )
