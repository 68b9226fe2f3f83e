"""Development tooling: run this repository's services under real gunicorn.

Not part of the installed distribution (setup.cfg installs mtls, pki,
userservice and homepage only): everything here depends on this checkout's
gunicorn_conf.py and wsgi.py, which an application using the `mtls` library
does not have. `make demo`, `make lb-demo`, the end-to-end tests and the
benchmarks all start, probe and stop their servers through
devserver.runner, so they cannot drift apart.
"""
