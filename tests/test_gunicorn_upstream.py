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
new digest here.
"""

from __future__ import annotations

import hashlib
import inspect

from gunicorn.workers import gthread

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


def overridden() -> list[str]:
    return sorted(
        name
        for name, value in vars(MtlsWorker).items()
        if callable(value) and hasattr(gthread.ThreadWorker, name)
    )


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
