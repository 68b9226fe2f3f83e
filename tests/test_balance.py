"""Kept-alive connections spread over the workers (mtls.balance; issue 13, target 5).

The table and the accept rule are pure (a shared mapping and a clock
passed in), tested without servers; then on a real gunicorn with two
workers: connections opened one by one split evenly, and a worker that
stops (SIGSTOP) is passed over instead of stalling new connections.
"""

from __future__ import annotations

import collections
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from mtls import hooks
from mtls.balance import MIN_HELD, PAUSE, WAIT, AcceptGate, ConnectionTable
from tests.clients import LoopbackHTTPS
from tests.servers import ECHO, Server, client_context, running, server_env

# -- the table ------------------------------------------------------------------


def test_the_master_hands_out_the_lowest_free_slot_emptied() -> None:
    table = ConnectionTable(slots=4)
    assert table.assign([]) == 0
    table.join(0, pid=100, held=7)
    assert table.assign([0]) == 1
    table.join(1, pid=101, held=3)
    # Slot 0's worker exited: its slot is handed out again, with no stale count.
    assert table.assign([1]) == 0
    assert table.others(1) == []


def test_no_slot_left_means_none_and_the_worker_accepts_as_gthread_does() -> None:
    table = ConnectionTable(slots=2)
    assert table.assign([0, 1]) is None
    with pytest.raises(IndexError, match=r"balance slot 2 is not in 0\.\.1"):
        table.join(2, pid=1, held=0)


def test_only_workers_accepting_now_are_others() -> None:
    table = ConnectionTable(slots=4)
    for slot in range(3):
        assert table.assign(range(slot)) == slot
    table.join(0, pid=100, held=1)
    table.join(1, pid=101, held=2)  # slot 2 assigned but not joined: still loading its app
    assert sorted(p.held for p in table.others(0)) == [2]
    table.leave(1)  # stopping: it takes no new connections
    assert table.others(0) == []
    table.clear(0)
    assert table.others(1) == []


def _forked_with(**cfg: object) -> SimpleNamespace:
    server = SimpleNamespace(
        cfg=SimpleNamespace(**cfg),
        WORKERS={},
        mtls_state=None,
        mtls_listener=None,
        mtls_channel=SimpleNamespace(generation=0),
        mtls_reloads=None,
        mtls_balance=ConnectionTable(slots=2),
    )
    worker = SimpleNamespace()
    hooks.pre_fork(server, worker)
    return worker


def test_the_master_gives_each_worker_a_slot() -> None:
    assert _forked_with(reuse_port=False).balance_slot == 0


def test_with_reuse_port_no_worker_takes_part() -> None:
    # Each worker listens on its own socket: a connection the kernel queued on a
    # heavier worker's waits for that worker only, so deferring it only delays it.
    assert getattr(_forked_with(reuse_port=True), "balance_slot", None) is None


# -- the rule ---------------------------------------------------------------------


def _two_workers() -> tuple[ConnectionTable, AcceptGate, AcceptGate]:
    table = ConnectionTable(slots=2)
    assert table.assign([]) == 0
    assert table.assign([0]) == 1
    a, b = AcceptGate(table, 0), AcceptGate(table, 1)
    a.join(pid=100, held=0)
    b.join(pid=101, held=0)
    return table, a, b


def test_a_worker_accepts_unless_an_accepting_worker_holds_fewer() -> None:
    _, a, b = _two_workers()
    a.held(2)
    b.held(2)
    assert a.should_accept(held=2, now=0.0)  # a tie: whoever the kernel woke first
    a.held(3)
    a.accepted()
    assert not a.should_accept(held=3, now=0.0)  # b holds fewer: b's turn
    assert b.should_accept(held=2, now=0.0)
    b.held(3)
    b.accepted()
    assert a.should_accept(held=3, now=0.001)


def test_a_worker_holding_under_min_held_never_defers() -> None:
    """One client connecting again and again stays on one worker, its caches warm."""
    _, a, _ = _two_workers()
    a.held(MIN_HELD - 1)
    assert a.should_accept(held=MIN_HELD - 1, now=0.0)
    a.held(MIN_HELD)
    assert not a.should_accept(held=MIN_HELD, now=0.0)


def test_a_lighter_worker_that_takes_nothing_for_wait_is_passed_over() -> None:
    _, a, _ = _two_workers()
    a.held(3)
    assert not a.should_accept(held=3, now=10.0)
    assert not a.should_accept(held=3, now=10.0 + WAIT / 2)
    # b's accept counter never moved: stuck, stopped or gone; a takes the connection.
    assert a.should_accept(held=3, now=10.0 + WAIT)


def test_a_lighter_worker_still_taking_connections_is_waited_for() -> None:
    _, a, b = _two_workers()
    a.held(5)
    assert not a.should_accept(held=5, now=0.0)
    for step in range(1, 5):
        b.accepted()  # b is making progress (and still holds fewer than a)
        b.held(step)
        assert not a.should_accept(held=5, now=step * WAIT * 0.9)
    b.held(5)
    assert a.should_accept(held=5, now=5 * WAIT)


def test_a_stuck_lighter_worker_stays_passed_over_until_it_accepts_again() -> None:
    _, a, b = _two_workers()
    a.held(3)
    assert not a.should_accept(held=3, now=10.0)
    assert a.should_accept(held=3, now=10.0 + WAIT)  # b stuck: passed over
    a.accepted()
    a.held(4)
    # The next connections are not held back WAIT each: one new connection per
    # WAIT for the whole server while b is stopped (gunicorn's timeout: 30 s).
    assert a.should_accept(held=4, now=10.0 + WAIT + 0.001)
    b.accepted()  # b is back: its turn again
    assert not a.should_accept(held=4, now=10.0 + WAIT + 0.002)


def test_a_heavier_worker_accepting_does_not_restart_the_wait_on_a_stuck_one() -> None:
    table = ConnectionTable(slots=3)
    for slot in range(3):
        assert table.assign(range(slot)) == slot
    stuck, b, c = (AcceptGate(table, slot) for slot in range(3))
    stuck.join(pid=100, held=0)
    b.join(pid=101, held=5)
    c.join(pid=102, held=5)
    assert not b.should_accept(held=5, now=0.0)
    assert not c.should_accept(held=5, now=0.0)
    assert b.should_accept(held=5, now=WAIT)
    b.accepted()
    b.held(6)
    # c waited WAIT on the stuck worker too; b's accept says nothing about that one.
    assert c.should_accept(held=5, now=WAIT)


def test_a_lighter_worker_with_more_handshakes_in_progress_is_not_waited_for() -> None:
    _, a, b = _two_workers()
    a.held(3)
    b.handshaking(1)
    # b's loop has more work already: with short connections (never held for
    # long) deferring would put every handshake of the server on b while a idles.
    assert a.should_accept(held=3, now=0.0, handshaking=0)
    # As many as a has: b is lighter, its turn (a burst of new connections).
    assert not a.should_accept(held=3, now=0.001, handshaking=1)
    b.handshaking(0)
    assert not a.should_accept(held=3, now=0.002, handshaking=0)


def test_a_lighter_worker_that_is_deferring_itself_is_not_waited_for() -> None:
    """Two workers each waiting out the other's pause: nobody would accept (a flood stalls)."""
    _, a, b = _two_workers()
    a.held(3)
    b.held(2)
    b.pause(until=10.0 + PAUSE)  # b left one to someone else just now
    assert a.should_accept(held=3, now=10.0)
    assert not a.should_accept(held=3, now=10.0 + PAUSE)  # b's pause is over: b's turn


def test_a_burst_of_connections_splits_evenly_while_both_are_mid_handshake() -> None:
    """Eight connections at once, as a pool opens them: each one is in its handshake."""
    _, a, b = _two_workers()
    gates = {"a": a, "b": b}
    held = {"a": 0, "b": 0}
    for _ in range(8):
        # Whichever the kernel woke first asks first; a deferring one leaves it to the other.
        takers = [n for n in ("a", "b") if gates[n].should_accept(held[n], 0.0, held[n])]
        taker = takers[0]
        held[taker] += 1
        gates[taker].held(held[taker])
        gates[taker].handshaking(held[taker])  # none of them done yet
        gates[taker].accepted()
    assert held == {"a": 4, "b": 4}


# -- a real server ----------------------------------------------------------------


@pytest.fixture
def two_workers(demo_pki: Path, tmp_path: Path) -> Iterator[Server]:
    ctx = client_context(demo_pki, "homepage")
    env = server_env(demo_pki, "userservice", MTLS_RELOAD_INTERVAL="0")
    with running(ECHO, env, tmp_path / "balance.log", ctx) as server:
        yield server


def _open(server: Server, demo_pki: Path) -> tuple[LoopbackHTTPS, int]:
    conn = LoopbackHTTPS(server, client_context(demo_pki, "homepage"))
    conn.request("GET", "/")
    response = conn.getresponse()
    assert response.status == 200
    return conn, int(json.loads(response.read())["worker_pid"])


class Held:
    """Kept-alive connections the test holds open, and the worker each one is on."""

    def __init__(self, server: Server, demo_pki: Path) -> None:
        self.server, self.pki = server, demo_pki
        self.conns: list[LoopbackHTTPS] = []
        self.on: collections.Counter[int] = collections.Counter()

    def open(self) -> int:
        conn, pid = _open(self.server, self.pki)
        self.conns.append(conn)
        self.on[pid] += 1
        return pid

    def until_both_serve(self) -> None:
        """A server is ready when one worker answers; the other may still be importing the app.

        A worker joins the table once it runs its loop: until then the first
        takes every connection, as it should.
        """
        for _ in range(MAX_WARMUP_CONNECTIONS):
            self.open()
            if len(self.on) == 2:
                return
        raise AssertionError(f"one worker took all {MAX_WARMUP_CONNECTIONS} connections")

    def close(self) -> None:
        for conn in self.conns:
            conn.close()


MAX_WARMUP_CONNECTIONS = 40


@pytest.fixture
def held(two_workers: Server, demo_pki: Path) -> Iterator[Held]:
    h = Held(two_workers, demo_pki)
    try:
        h.until_both_serve()
        yield h
    finally:
        h.close()


def test_each_connection_goes_to_the_worker_holding_fewer(held: Held) -> None:
    while sum(held.on.values()) < 8 or len(set(held.on.values())) > 1:
        before = dict(held.on)
        pid = held.open()
        lightest = min(before.values())
        fair = before[pid] == lightest or before[pid] < MIN_HELD
        assert fair, f"{pid} held {before[pid]} of {before} and got one more"
        assert sum(held.on.values()) <= MAX_WARMUP_CONNECTIONS * 2
    print(f"kept-alive connections per worker: {dict(held.on)}")
    assert len(set(held.on.values())) == 1
    # They stay where they were accepted: a second request on each answers the same.
    for conn in held.conns:
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.status == 200
        json.loads(response.read())


def test_a_stopped_worker_with_fewer_connections_is_passed_over(held: Held) -> None:
    if len(set(held.on.values())) == 1:
        held.open()  # a tie: whoever wins it holds more, the other is the lighter
    lighter, serving = sorted(held.on, key=held.on.__getitem__)
    os.kill(lighter, signal.SIGSTOP)
    try:
        # The stopped worker holds fewer and never accepts: every new connection
        # still gets an answer, from the other worker, WAIT later at most.
        for _ in range(4):
            assert held.open() == serving
    finally:
        os.kill(lighter, signal.SIGCONT)
