"""The demo services' gunicorn config: the packaged one plus the demo's defaults.

    gunicorn -c gunicorn_conf.py --bind 127.0.0.1:8443 wsgi:userservice

Everything mTLS comes from mtls.gunicorn_conf (any other app starts with
``-c python:mtls.gunicorn_conf`` alone). Bind, workers and threads are
gunicorn's own options (command line or GUNICORN_CMD_ARGS override these).
"""

from mtls.gunicorn_conf import *  # noqa: F403  # the worker, hooks, logger, TLS files

workers = 2
threads = 4
keepalive = 5
