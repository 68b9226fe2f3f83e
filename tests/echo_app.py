"""A WSGI app for the runtime tests: answers with what the worker put in the environ.

``/slow?s=N`` first announces itself on stderr (the server log) and sleeps N
seconds (at most 30): a request that is reliably in flight inside a known
worker, for the fault tests that kill that worker under it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

SLOW_MAX_SECONDS = 30.0


def slow_request_started(pid: int) -> str:
    """The log line /slow writes once it is inside the app (what the tests wait for)."""
    return f"echo_app: slow request started in worker {pid}"


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/slow":
        seconds = float(parse_qs(environ.get("QUERY_STRING", "")).get("s", ["1"])[0])
        print(slow_request_started(os.getpid()), file=sys.stderr, flush=True)
        time.sleep(min(max(seconds, 0.0), SLOW_MAX_SECONDS))
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
