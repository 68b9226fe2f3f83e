"""One gunicorn config for both services, driven by the MTLS_* env vars (README, "Server settings").

Glue only: the logic lives in mtls.hooks, mtls.serverstate and mtls.worker.
Start with e.g.
    gunicorn -c gunicorn_conf.py --bind 127.0.0.1:8443 wsgi:userservice
Bind, workers and threads are gunicorn's own options (command line or
GUNICORN_CMD_ARGS override the defaults here).
"""

import os

from mtls import hooks

worker_class = "mtls.worker.MtlsWorker"
workers = 2
threads = 4
keepalive = 5

# gunicorn's ssl options, from the MTLS_* variables: they make gunicorn report
# https and set wsgi.url_scheme. The worker handshakes with the context that
# mtls.hooks builds once in the master from the same files.
certfile = os.environ.get("MTLS_CERTFILE") or None
keyfile = os.environ.get("MTLS_KEYFILE") or None
ca_certs = os.environ.get("MTLS_CA_CERTS") or None

# gunicorn's PROXY support reads the header after TLS; ours reads it before.
proxy_protocol = "off"
# gunicorn >= 25.3 shares one control socket per user and deletes an existing
# one, so two services (or parallel test servers) would fight over it.
control_socket_disable = True

# Every record escaped to one line of printable text (the DN is peer-chosen):
# see mtls.logs. The environ's SSL_CLIENT_S_DN itself stays mod_ssl's.
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
