"""Stock gunicorn 27 as the baseline: its own gthread worker and ssl options, nothing of ours."""

worker_class = "gthread"
keepalive = 5
control_socket_disable = True
