"""WSGI entry points: ``gunicorn -c gunicorn_conf.py wsgi:userservice`` (or ``wsgi:homepage``).

Each app is built on first access through a module-level ``__getattr__``
(PEP 562) instead of at import: one gunicorn process serves one service, and
``wsgi:userservice`` must not need the Home Page's settings or certificates
(nor the reverse). gunicorn 27 resolves ``wsgi:NAME`` with
``getattr(module, NAME)``, which reaches ``__getattr__``. The built app is then
stored as a real module attribute, so later lookups are plain attribute reads.

A setting error (the factory's ConfigError/PolicyError) becomes gunicorn's
AppImportError, which gunicorn reports as one message and a stop. An
AttributeError raised while building is re-raised as RuntimeError, because
gunicorn would otherwise report it as "Failed to find attribute".
"""

from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING

from gunicorn.errors import AppImportError

from mtls.errors import MtlsError

if TYPE_CHECKING:
    from flask import Flask

    userservice: Flask
    homepage: Flask

#: attribute -> package whose create_app() builds it
_FACTORIES = {"userservice": "userservice", "homepage": "homepage"}
_lock = threading.Lock()

__all__ = ["homepage", "userservice"]  # built lazily by __getattr__


def __getattr__(name: str) -> Flask:
    package = _FACTORIES.get(name)
    if package is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _lock:
        app = globals().get(name)
        if app is None:
            try:
                app = importlib.import_module(package).create_app()
            except MtlsError as exc:
                # gunicorn prints an AppImportError's message alone (no
                # traceback) and stops: a bad setting is the operator's to fix.
                raise AppImportError(f"wsgi:{name}: {exc}") from None
            except AttributeError as exc:
                raise RuntimeError(f"building wsgi:{name} failed: {exc}") from exc
            globals()[name] = app
    return app  # type: ignore[no-any-return]


def __dir__() -> list[str]:
    return sorted({*globals(), *_FACTORIES})
