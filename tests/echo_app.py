"""A WSGI app for the runtime tests: answers with what the worker put in the environ."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    keys = {k: v for k, v in environ.items() if k.startswith(("SSL_", "HTTPS", "REMOTE_"))}
    keys["wsgi.url_scheme"] = environ["wsgi.url_scheme"]
    peer = environ.get("mtls.peer")
    keys["peer_subject"] = getattr(peer, "subject_dn", None)
    keys["worker_pid"] = os.getpid()
    if environ["REQUEST_METHOD"] == "POST":
        # Reads the whole body: what a stalled body holds a thread in.
        keys["body_length"] = len(environ["wsgi.input"].read())
    body = json.dumps(keys).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]
