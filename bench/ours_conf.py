"""The project's gunicorn_conf.py unchanged, except where the access log goes.

Every server in the bench runs without an access log, so that the log is
priced on its own: BENCH_ACCESS_LOG=1 keeps the shipped access_log_format and
writes it to /dev/null (the formatting cost, not the disk's). With
BENCH_ACCESS_TIMER_DIR set, each worker times its access-log calls
(bench/accesstimer.py: target 2b).
"""

import os
import runpy
from pathlib import Path

from bench import accesstimer

_shipped = runpy.run_path(str(Path(__file__).resolve().parent.parent / "gunicorn_conf.py"))
globals().update({k: v for k, v in _shipped.items() if not k.startswith("_")})

accesslog = "/dev/null" if os.environ.get("BENCH_ACCESS_LOG") == "1" else None
if "post_worker_init" in _shipped:  # the timer would replace it: say so rather than drop it
    raise RuntimeError("bench/ours_conf.py: gunicorn_conf.py now sets post_worker_init; chain it")
post_worker_init = accesstimer.install
