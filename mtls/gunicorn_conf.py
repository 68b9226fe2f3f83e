"""Everything gunicorn needs to run any WSGI app behind mTLS, driven by the MTLS_* variables.

    gunicorn -c python:mtls.gunicorn_conf --bind 127.0.0.1:8443 yourapp:app

Your own config file starts with ``from mtls.gunicorn_conf import *`` and then
overrides gunicorn's own options (bind, workers, threads, timeouts); keep the
worker, the hooks, the logger and the TLS files as they are here. Glue only:
the logic lives in mtls.hooks, mtls.serverstate, mtls.worker and mtls.logs.
"""

import os

from mtls import hooks

__all__ = [
    "access_log_format",
    "accesslog",
    "ca_certs",
    "certfile",
    "child_exit",
    "control_socket_disable",
    "keyfile",
    "logger_class",
    "on_exit",
    "on_reload",
    "on_starting",
    "post_fork",
    "pre_fork",
    "proxy_protocol",
    "when_ready",
    "worker_class",
]

worker_class = "mtls.worker.MtlsWorker"

# gunicorn's ssl options, from the MTLS_* variables: with them gunicorn sets
# wsgi.url_scheme to https (request.is_secure, url_for(_external=True)). The
# worker handshakes with the context that mtls.hooks builds once in the
# master from the same files.
certfile = os.environ.get("MTLS_CERTFILE") or None
keyfile = os.environ.get("MTLS_KEYFILE") or None
ca_certs = os.environ.get("MTLS_CA_CERTS") or None

# gunicorn's PROXY support reads the header after TLS; ours reads it before.
proxy_protocol = "off"
# gunicorn >= 25.3 shares one control socket per user and deletes an existing
# one, so two services (or parallel test servers) would fight over it.
control_socket_disable = True

# Every record escaped to one line of printable text (the DN is peer-chosen),
# and every logger (the app's own too) sent to gunicorn's error log at
# --log-level: see mtls.logs. The environ's SSL_CLIENT_S_DN stays mod_ssl's.
logger_class = "mtls.logs.MtlsLogger"
accesslog = "-"
access_log_format = (
    '%(h)s:%({REMOTE_PORT}e)s "%(r)s" %(s)s %(b)s %(M)sms '
    'dn="%({SSL_CLIENT_S_DN}e)s" tls=%({SSL_PROTOCOL}e)s resumed=%({SSL_SESSION_RESUMED}e)s'
)

on_starting = hooks.on_starting
when_ready = hooks.when_ready
pre_fork = hooks.pre_fork
on_reload = hooks.on_reload
post_fork = hooks.post_fork
child_exit = hooks.child_exit
on_exit = hooks.on_exit
