"""The bounded sets of connections waiting on the event loop, and whom to drop (pure).

A worker holds two kinds of waiting connection: those in their PROXY header
or TLS handshake, and handshaken ones waiting for (the rest of) a request.
Neither may grow without bound, and neither may ever stop the worker from
accepting a new client: gthread's ``worker_connections`` gate did, so 2,000
idle sockets locked every new client out. Here a full set admits the new
connection and drops one old one instead, as nginx reuses its idle
keep-alive connections when it runs out: among the oldest, the one of the
lowest worth (a peer that has sent nothing yet is the cheapest to lose and
the likeliest attacker; one that has been served before is a client worth
keeping), the oldest on a tie. No sockets here: the worker closes what it
is handed.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar


class Waiting(Protocol):
    #: Monotonic seconds when this connection's current phase runs out.
    deadline: float


C = TypeVar("C", bound=Waiting)

# How many of the oldest members to look through for a silent one. Bounded,
# so admitting a connection costs the same however full the set is.
EVICTION_SCAN = 64


class WaitingSet(Generic[C]):
    """Connections in insertion (age) order, at most ``limit`` of them."""

    def __init__(self, limit: int, worth: Callable[[C], int]) -> None:
        self.limit = limit
        self._worth = worth
        self._members: collections.OrderedDict[C, None] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, conn: object) -> bool:
        return conn in self._members

    def __iter__(self) -> Iterator[C]:
        return iter(list(self._members))

    def add(self, conn: C) -> C | None:
        """Admit ``conn``; if the set was full, return the member dropped to make room."""
        victim = self.victim() if len(self._members) >= self.limit else None
        if victim is not None:
            del self._members[victim]
        self._members[conn] = None
        return victim

    def victim(self) -> C | None:
        """Whom to drop next: of the oldest EVICTION_SCAN, the least worth, the oldest on a tie."""
        best: C | None = None
        best_worth = 0
        for i, conn in enumerate(self._members):
            worth = self._worth(conn)
            if best is None or worth < best_worth:
                best, best_worth = conn, worth
            if worth == 0 or i + 1 >= EVICTION_SCAN:
                break
        return best

    def discard(self, conn: C) -> None:
        self._members.pop(conn, None)

    def expired(self, now: float) -> list[C]:
        """Members whose deadline has passed, oldest first (deadlines need not be ordered)."""
        return [c for c in self._members if c.deadline <= now]
