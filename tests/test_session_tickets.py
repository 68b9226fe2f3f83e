"""The listener's TLS 1.3 tickets: one per full handshake (mtls.tls), and it resumes.

Real handshakes between our server context and a client context over
ssl.MemoryBIO pairs; the client counts the NewSessionTicket messages it reads
with its own message callback.
"""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

from mtls.serverstate import build_server_context
from mtls.settings import ServerSettings
from mtls.tls import SESSION_TICKETS
from tests.servers import client_context, server_env

_HANDSHAKE = 22  # ContentType (RFC 8446 5.1)
_NEW_SESSION_TICKET = 4  # HandshakeType (RFC 8446 4)


def connect(
    server: ssl.SSLContext, client: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> ssl.SSLObject:
    """A whole handshake, one request/response (the client reads the tickets), a close_notify."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    cli = client.wrap_bio(c_in, c_out, server_hostname="userservice.internal", session=session)
    for _ in range(10):
        try:
            cli.do_handshake()
            break
        except ssl.SSLWantReadError:
            s_in.write(c_out.read())
            with contextlib.suppress(ssl.SSLWantReadError):
                srv.do_handshake()
            c_in.write(s_out.read())
    cli.write(b"ping")
    s_in.write(c_out.read())
    assert srv.read(4) == b"ping"
    srv.write(b"pong")
    c_in.write(s_out.read())
    assert cli.read(4) == b"pong"  # after the tickets, which the server wrote first
    # Ended as the worker ends it (mtls.serverconn.send_close_notify): OpenSSL
    # drops from its cache a session whose connection sent no close_notify.
    with contextlib.suppress(ssl.SSLWantReadError):
        srv.unwrap()
    return cli


def test_a_full_handshake_gets_one_ticket_and_resuming_gets_a_fresh_one(demo_pki: Path) -> None:
    server = build_server_context(ServerSettings.from_env(server_env(demo_pki, "userservice")))
    client = client_context(demo_pki, "homepage")
    tickets: list[str] = []

    def count(conn: object, direction: str, version: int, kind: int, msg: int, _: bytes) -> None:
        if direction == "read" and (kind, msg) == (_HANDSHAKE, _NEW_SESSION_TICKET):
            tickets.append("ticket")

    client._msg_callback = count  # type: ignore[attr-defined]
    first = connect(server, client)
    assert first.version() == "TLSv1.3"
    assert (len(tickets), first.session_reused) == (SESSION_TICKETS, False) == (1, False)
    assert first.session is not None
    assert first.session.has_ticket
    tickets.clear()
    second = connect(server, client, session=first.session)
    assert second.session_reused
    assert len(tickets) == 1  # OpenSSL sends one on every resumption, so the next one resumes
