"""The one trivial app every Python server in the bench serves, so what differs is the server.

`/users/1` returns a fixed small JSON body, the same bytes nginx's
`return 200` sends (bench/servers.py), so response sizes match across
servers. The worker's pid goes in an `X-Pid` header, not the body: the
keep-alive client counts which worker answered (target 5, spread) without
changing the body.

`policy_app` is the same route behind the project's DN policy (require_dn on
its blueprint, so every request is checked) and touches the identity environ
the worker fills, as a real service does.
"""

from __future__ import annotations

import os

from flask import Blueprint, Flask, Response, request

from mtls.policy import enforce_policy_coverage, require_dn

BODY = b'{"id":1,"name":"Ada Lovelace","email":"ada@example.com"}'
PATH = "/users/1"
# The demo PKI's client (pki demo: homepage), matched as a whole DN.
CLIENT_DN = r"CN=homepage\.internal,OU=Services,O=Example"


def _user() -> Response:
    return Response(BODY, mimetype="application/json", headers={"X-Pid": str(os.getpid())})


def create_app() -> Flask:
    plain = Flask(__name__)
    plain.add_url_rule(PATH, "user", _user)
    return plain


def create_policy_app() -> Flask:
    guarded = Flask(__name__)
    users = Blueprint("users", __name__, url_prefix="/users")
    require_dn(users, CLIENT_DN, setting="bench.app.CLIENT_DN")

    @users.get("/1")
    def user() -> Response:
        if request.environ.get("SSL_CLIENT_VERIFY") != "SUCCESS":
            # cannot happen behind require_dn; proves the identity environ was read
            return Response(b"no verified identity", status=500)
        return _user()

    guarded.register_blueprint(users)
    enforce_policy_coverage(guarded)
    return guarded


app = create_app()
policy_app = create_policy_app()
