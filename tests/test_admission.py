"""mtls.admission: who is dropped when a waiting set is full, without sockets."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from mtls.admission import EVICTION_SCAN, WaitingSet


@dataclass(eq=False)
class Conn:
    name: str
    heard_from: bool = False
    deadline: float = 0.0


def table(limit: int) -> WaitingSet[Conn]:
    return WaitingSet(limit, worth=lambda c: int(c.heard_from))


def test_a_set_with_room_drops_no_one() -> None:
    s = table(2)
    assert s.add(Conn("a")) is None
    assert s.add(Conn("b")) is None
    assert len(s) == 2


def test_a_full_set_drops_the_oldest_silent_member_not_the_oldest_talking_one() -> None:
    s = table(3)
    talking, silent, newer = Conn("talking", heard_from=True), Conn("silent"), Conn("newer")
    for c in (talking, silent, newer):
        s.add(c)
    arriving = Conn("arriving")
    assert s.add(arriving) is silent
    assert list(s) == [talking, newer, arriving]


def test_when_everyone_talks_the_oldest_goes() -> None:
    s = table(2)
    first, second = Conn("first", heard_from=True), Conn("second", heard_from=True)
    s.add(first)
    s.add(second)
    assert s.add(Conn("third")) is first


def test_the_scan_for_a_silent_member_is_bounded() -> None:
    s = table(EVICTION_SCAN + 1)
    talkers = [Conn(f"t{i}", heard_from=True) for i in range(EVICTION_SCAN)]
    for c in talkers:
        s.add(c)
    s.add(Conn("silent but far back"))
    assert s.add(Conn("new")) is talkers[0]


def test_a_connection_worth_more_outlives_older_cheaper_ones() -> None:
    """The review's case: a served keep-alive client must not go before fresh half-heads."""
    worth = {"served": 2, "half-head": 1, "silent": 0}
    s: WaitingSet[Conn] = WaitingSet(3, worth=lambda c: worth[c.name.split()[0]])
    served, half1, half2 = Conn("served"), Conn("half-head 1"), Conn("half-head 2")
    for c in (served, half1, half2):
        s.add(c)
    assert s.add(Conn("half-head 3")) is half1


def test_expired_members_are_listed_oldest_first_whatever_their_order() -> None:
    s = table(10)
    a, b, c = Conn("a", deadline=5), Conn("b", deadline=1), Conn("c", deadline=3)
    for conn in (a, b, c):
        s.add(conn)
    assert s.expired(3) == [b, c]
    s.discard(b)
    assert s.expired(3) == [c]


@given(st.lists(st.booleans(), max_size=200), st.integers(min_value=1, max_value=50))
def test_never_more_members_than_the_limit_and_the_newest_always_admitted(
    talking: list[bool], limit: int
) -> None:
    s = table(limit)
    for i, heard in enumerate(talking):
        conn = Conn(str(i), heard_from=heard)
        dropped = s.add(conn)
        assert conn in s
        assert dropped is None or dropped not in s
        assert len(s) <= limit
