"""What a client certificate says, worked out once per certificate instead of once per connection.

A service sees the same few client certificates thousands of times (the
Home Page presents one certificate on every connection it opens). Parsing
the DER, printing both DNs, reading the SANs and the PEM for the environ
cost 220 us a connection (measured on the bench machine), more than the
CPU nginx spends on a whole resumed connection (bench/RESULTS.md); cached,
it costs 3 us: a dict lookup and a copy of the certificate's variables.

Keyed by the exact DER bytes OpenSSL verified: the same bytes parse to the
same certificate, so nothing a connection is judged by changes. Deliberately
NOT cached: whether the certificate is still acceptable (expiry, revocation,
a stale CRL: ``TlsState.refuse_peer`` runs on every resumed session and
every request, against the state in use then), what depends on the
connection or the clock (protocol, cipher, SNI, resumption,
SSL_CLIENT_V_REMAIN: ``mtls.identity.connection_environ``), and a
certificate that cannot be read (each connection presenting it is refused
with the same error, so a failure is never remembered).

Bounded: past ``size`` certificates the least recently presented is
forgotten, so a CA with many clients costs a fixed few hundred KiB per
worker, not memory that grows with the clients ever seen. Used from the
worker's main thread only, so it takes no lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509

from mtls.identity import PeerIdentity, certificate_environ, peer_from_der

#: Certificates remembered per worker; each costs ~3 KiB (object, PEM, environ).
CACHE_SIZE = 256


@dataclass(frozen=True)
class KnownPeer:
    """One verified client certificate and everything read from it once."""

    cert: x509.Certificate
    identity: PeerIdentity
    # certificate_environ(cert), shared: mtls.identity.connection_environ copies it.
    environ: Mapping[str, str]


class IdentityCache:
    """DER -> KnownPeer, the least recently presented dropped past ``size``."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._known: OrderedDict[bytes, KnownPeer] = OrderedDict()

    def __len__(self) -> int:
        return len(self._known)

    def peer(self, der: bytes) -> KnownPeer:
        """The certificate ``der`` encodes; ValueError (``peer_from_der``'s) if unreadable."""
        known = self._known.get(der)
        if known is not None:
            self._known.move_to_end(der)
            return known
        cert = peer_from_der(der)  # raises before anything is remembered
        known = KnownPeer(cert, PeerIdentity.from_certificate(cert), certificate_environ(cert))
        self._known[der] = known
        if len(self._known) > self.size:
            self._known.popitem(last=False)
        return known
