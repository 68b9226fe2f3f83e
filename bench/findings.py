"""What limits the new and resumed connection, measured: RESULTS.md's notes (bench/run.py).

Measured on the bench machine on 2026-12-02 (the figures are this machine's,
noisy as it is; the split is the stable part). How:
- "split": `perf record -F 1499 -p <server's pids>` during 5 s of the bench's
  own client, samples grouped by the library they fell in, times the same
  slices' CPU per operation from /proc (libc is mostly OpenSSL's malloc and
  locks: nginx spends the same there).
- "micro": a server-side handshake between our context and a client context
  over ssl.MemoryBIO pairs, 1,200 interleaved repetitions, median.
Re-measure after a change to the connection path; the harness is the bench.
"""

from __future__ import annotations

HANDSHAKE_NOTES = [
    "This round's connection-path changes, before and after in one run (3 interleaved rounds "
    "of 2 s, median, us per operation; before / after / nginx): new connection + request "
    "2,662 / 1,950 / 1,371 (1a: 0.52x -> 0.70x); bare handshake 2,072 / 1,407 / 1,170 (1b: "
    "0.57x -> 0.83x); resumed + request 1,690 / 1,227 / 639 (3a: 0.64x -> 0.63x: both sides "
    "of that ratio fell). A full `make bench` after the merge is the figure of record.",
    "Where a connection's server CPU goes (split, us per operation; one run, ours / nginx): "
    "bare handshake: OpenSSL 1,028 / 1,034, libc 477 / 424, Python 371 / -, kernel 264 / 97; "
    "new connection + request: OpenSSL 1,143 / 1,025, libc 500 / 454, Python 899 / -, "
    "kernel 340 / 193; resumed + request: OpenSSL 579 / 523, libc 294 / 214, Python 570 / -, "
    "kernel 300 / 172. OpenSSL does the same work in both servers (both negotiate X25519 and "
    "TLS_AES_256_GCM_SHA384 with the bench's s_time); the gap is our Python and the kernel.",
    "Target 1b (bare handshake) misses by the Python still around OpenSSL (~370 us: accept, "
    "wrap_socket, the poller, identify, close_notify and close, each 10-60 us when interleaved "
    "with OpenSSL, 3-4x what the same code costs in a loop) and kernel time (+170 us: ~34 "
    "syscalls per connection against nginx's ~23; CPython reads each TLS record with two "
    "read()s, nginx sets read-ahead, which Python's ssl does not expose).",
    "Target 1a (new connection + request) misses mostly by the request: 420-530 us per "
    "request in the pool thread (gunicorn's parser and response, Flask), against nginx's "
    "`return 200`; the same request costs ~250 us on a kept-alive connection, so about half "
    "of it is the caches the handshake just evicted. That path is the keep-alive work's.",
    "Target 3a (resumed <= 0.5x new) misses in OpenSSL itself: a resumed TLS 1.3 handshake "
    "with a client certificate costs 0.60x a full one (micro: 682 vs 1,136 us; the session "
    "with the client's certificate is decoded from the ticket, a new ticket is encrypted "
    "(125 us, OpenSSL sends one on every resumption), ECDHE is done again), and the request "
    "adds the same to both. The revocation/expiry re-check of a resumed session costs ~2 us.",
    "Done on this path (each measured): the message callback installed without ssl.py's "
    "enum-converting wrapper (85 -> 15 us per handshake, micro); each client certificate's "
    "parse, PeerIdentity and environ cached by DER (220 -> 3 us per connection; "
    "mtls.identitycache); one TLS 1.3 ticket per full handshake instead of 2 (125 us each, "
    "micro). nginx keeps OpenSSL's 2 tickets in this bench (it could send 1 with "
    "`ssl_conf_command NumTickets 1`), so ours does ~125 us less OpenSSL work per full "
    "handshake than nginx here; without it ours would read ~0.07x lower on 1a and 1b.",
    "Measured and left: prometheus metrics (MTLS_METRICS_BIND) cost ~10 us per connection "
    "(two gauge moves, a counter, a histogram; caching the labelled child saved nothing); "
    "the MSG_PEEK probe 5 us; datetime.now 0.2 us; the SNI callback one Python call. "
    "gunicorn's once-per-loop utime of its heartbeat file shows in py-spy (wall clock) but "
    "costs 0.4 % of the CPU (perf).",
]
