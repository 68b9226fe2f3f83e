"""internal-mtls: mutual TLS in front of any WSGI app, and between your services.

What applications import (everything else is the runtime's own machinery):
- ``mtls.gunicorn_conf``: the gunicorn config, ``gunicorn -c python:mtls.gunicorn_conf
  yourapp:app`` (or ``from mtls.gunicorn_conf import *`` in your own);
- ``mtls.flask``: ``Mtls``, ``require_peer``, ``mark_public``, ``current_peer``,
  ``require_dn``: identity rules per blueprint or view, failing closed;
- ``mtls.rules``: ``compile_rules``, what a rule means (server and client alike);
- ``mtls.client``: ``ClientSettings``, ``make_session``, ``tls_facts``: calling
  another service with our certificate (``server_dn``, ``server_rules``);
- ``mtls.identity``: ``PeerIdentity``, ``format_dn``: the names as policies see them;
- ``mtls.errors``: ``MtlsError`` and its subclasses.
The server's settings are the ``MTLS_*`` environment variables (README).
"""

__all__ = ["client", "errors", "flask", "gunicorn_conf", "identity", "rules"]
