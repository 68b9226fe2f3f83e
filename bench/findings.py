"""What limits the new, resumed and kept-alive connection, measured: RESULTS.md's notes.

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

# Keep-alive request (targets 2a, 2b), measured on 2026-12-02 13:05-13:45 UTC
# while other sessions loaded the machine: every server's CPU per request read
# ~4-5x its figure in bench/RESULTS.md (plain HTTP ~900 us against 217), so
# the split is given as shares, scaled to RESULTS.md's figures. How:
# - "split": thread CPU (time.thread_time_ns) per method of the worker, ours +
#   policy + access log under the bench's own 8-connection keep-alive client
#   for 5 s, one run before and one after (a gunicorn config that wraps the
#   methods; py-spy stopped the worker on every sample and cost more than the
#   parts measured, and perf sees no Python frames on 3.11);
# - "micro": the piece in a loop on the server's CPU, min of 7 repeats;
# - "A/B": the old code (72faaf7) and this code served side by side, 5
#   interleaved rounds of 3 one-second slices (bench.run's sample/row_from on
#   both trees at once), median of the rounds, paired per round.
KEEPALIVE_NOTES = [
    "Where a keep-alive request's server CPU goes (split, ours + policy + access log, before "
    "this round's changes, scaled to 326 us): pool thread 77 %: Flask with the DN policy "
    "~92 us, gunicorn's parser, environ and response ~100 us, the access log ~26 us, the TLS "
    "record write (head + body in one record, one syscall) ~19 us plus ~8 us of ssl.py's "
    "sendall loop around it, the identity environ (25 keys) ~7 us, setblocking x2 ~3 us; "
    "event loop 23 %: the TLS record read (SSLSocket.recv) ~9 us, head buffer + re-check + "
    "hand-over ~23 us (the pool submit 6 us, poller unregister 3.5 us, the re-check's "
    "certificate reads 2 us), back from the pool onto the poller ~15 us, epoll and dispatch "
    "~10 us, murder_pending ~4 us, gunicorn's heartbeat utime ~3.5 us (one loop turn per "
    "request).",
    "Done (each measured): the access log line written without a LogRecord where every "
    "handler writes the escaped message alone, gunicorn's own (micro 28.8 -> 15.2 us: the "
    "record 5.3 us and Logger.handle 8 us gone, the format's Setting read directly, 1.7 us); "
    "a response write of bytes as one OpenSSL write instead of ssl.py's memoryview loop "
    "(split: sendall -24 %); the kept-alive re-check with the certificate's serial and "
    "notAfter read once per connection and the leaf serial once per state (1.15 + 0.68 us "
    "-> 0.07 us; split: hand-over -23 %); the idle-deadline scan only once the earliest "
    "deadline can have passed, and reloads looked up once a turn instead of twice (split: "
    "murder_pending + reload checks 27 -> 19, ~1.6 us); the policy's unrouted guard and "
    "decision count without Flask's proxies and os.environ (micro: 2.6 -> 0.6 us, "
    "4.7 -> 3.2 us). Split, before / after, at this machine's scale: access log 137 / 74, "
    "sendall 145 / 111, hand-over 93 / 72, whole request ~1,720 / ~1,480 us (-14 %, some "
    "of it the app's own noise).",
    "A/B (us per request at this machine's ~4.2x scale, median, before / after): ours + "
    "policy 1,232 / 1,241 (paired per round: +59, -89, +45, +66, -52: the ~15-20 us saved "
    "at RESULTS.md's scale is under this run's noise), plain 905, so 2a 0.73x / 0.73x; ours "
    "+ policy + access log 1,392 / 1,257 (paired: -224, -87, -74, +48, -153); the access log's "
    "extra 160 / 16 us (per round 217, 60, 273, 166, 216 / -66, 62, 154, 148, 115), about "
    "38 / 4 us at RESULTS.md's scale. The figure of record is the next quiet `make bench`.",
    "Target 2a (ours + policy >= 0.95x plain, <= ~228 us) is out of reach on gunicorn's "
    "request path: TLS alone costs ~27 us a request (stock gunicorn mTLS 244 vs plain 217; "
    "the split's record read + write ~28 us), more than the 11 us 0.95x allows, and stock "
    "gunicorn, with no identity and no policy, already reads 0.89x. What ours adds over stock "
    "(~60 us with the policy) is the hand-over through the event loop (estimated ~25 us over "
    "gthread's, which reads in the thread: the head read, the unregister/register pair, the "
    "pool submit), the policy (~20 us: two more Flask hooks, each with ensure_sync 1.2 us, "
    "_check 15 us of which PeerNames from ~8 environ keys 6.3 us, a frozen dataclass "
    "2.1 us of it, the decision count 3.2 us, the regex 1.7 us), the identity environ (~7 us).",
    "Target 2b (access log <= 15 us) is read from the access-log call itself "
    "(bench/accesstimer.py), because the whole-server difference cannot resolve it: two "
    "instances of the same ours + policy server, started alike and measured in 5 interleaved "
    "rounds of 4 x 1 s, read 1,394 and 1,223 us per keep-alive request, the first higher in "
    "every round; with PYTHONHASHSEED=0 on both, 1,076 and 1,365 (so not the hash seed). "
    "Since then every round starts its servers afresh. The bench before this read 2b as "
    "20, 144 and -149 us in three runs.",
    "Target 2b's call, split in the worker under load (thread CPU per request, nested "
    "timers, one run at this machine's ~3.5x scale): the line 32-41 us (4.4-6.8 us in a "
    "loop), the escape check 3.4-4.3 us (0.6), the handler's write + flush 40-55 us, of "
    "which the flush (one write(2) to /dev/null, which drops and takes back the GIL while "
    "the other threads of the worker wait for it) is ~27 us: without the flush the write "
    "read 28-30. Everything costs 4-6x its loop figure inside the server: the request "
    "around it has evicted the caches. Measured and left: batching lines and flushing once "
    "per loop turn would save most of the flush, but a line would then sit in a buffer that "
    "a killed worker loses; every line is flushed as it is written, as nginx's access_log "
    "does without buffer=. Done: the format from a tuple instead of a dict of atoms, and an "
    "environ atom's upper-case key in one lookup (line 6.8 -> 4.4 us in a loop).",
    "Measured and left: the pool submit and the method-queue wake-up (~10 us, gthread's "
    "design), the per-turn heartbeat utime (~3.5 us, in gthread's run loop, which the "
    "balancing work owns), werkzeug/Flask's own ~90 us and gunicorn's parser and Response "
    "~100 us. The next steps for 2a are there (a narrower parser and response for the "
    "common GET, or one Flask hook that does the policy), not in identity or the policy's "
    "rules.",
    "Target 5 (spread) is mtls.balance: a worker holding more connections than another "
    "accepting worker leaves the next one to it (its listener off the poller for 1 ms), "
    "unless that one has more handshakes in progress, is deferring itself, or took nothing "
    "for 50 ms. Ad hoc, 8 slices of 1 s, 8 keep-alive connections: busiest share "
    "0.50-0.54 (ours) against 0.50-1.00 (stock gunicorn) in the same minutes. The cost "
    "is one read of the shared table per accept (a few us). A first version that waited "
    "out a 5 ms pause on both workers left a flood of 1,000 new connections with nobody "
    "accepting now and then (target 6's last probe: 1.6 s); never deferring to a worker "
    "that is deferring itself brought it back to 0.19-0.36 s max, as without balancing "
    "(0.14-0.30 s in the same minutes).",
    "Target 1b read 0.88x in the morning's run (10:17 UTC) and 0.74-0.81x in every run "
    "since. Not this day's code: HEAD against the morning's commit (0713990), each started "
    "afresh in each of 8 rounds, 3 interleaved slices of 1 s with nginx, bare handshakes: "
    "3,786 / 3,746 us median (paired differences -388 to +247), 1b 0.80x / 0.81x in the same "
    "minutes. Nor outside load: a fresh machine with a load average of 0.08-0.61 ran every "
    "figure ~3x the morning's (nginx's bare handshake 3,273-4,055 us against 1,303). What is "
    "left is the instance: the morning's run measured one ours for all its rounds, and fresh "
    "instances of the same code read 3,325-4,002 us in the A/B's 8 rounds (+-10 %), the "
    "spread between 0.88x and 0.78x. Also measured: balancing on / off on the same code, bare "
    "handshake 5,210 / 5,276 us, new connection + request 7,314 / 7,679 (5 interleaved "
    "rounds), so balancing costs nothing measurable.",
    "Target 4 (RSS flat over 100k): no leak. Soaked apart from the bench (2 workers x 4 "
    "threads, VmRSS per worker): ours keep-alive 40.0/40.0 MiB after 20k, 100k, 200k and "
    "400k requests, plain-HTTP gunicorn 39.8/39.8, stock gunicorn TLS 42.5 -> 42.9; Python's "
    "allocated blocks (~176k) and gc objects (~43k) flat throughout. The +4.5 MiB the bench "
    "used to note was its own stalled check: 1,000 silent peers, each wrapped in an SSL "
    "object at accept (9 KiB, 8.4 of it OpenSSL's), left a worker ~9.5 MiB larger for good "
    "(glibc keeps what OpenSSL frees; malloc_trim gave back ~8 MiB; MALLOC_ARENA_MAX=2 "
    "changed nothing: the main thread's arena). Done: a socket is wrapped only once its peer "
    "has sent something (a silent peer ~1 KiB: a stall +0.6 MiB), and the flatness note "
    "compares the soak with a reading the soak takes itself, after the stalled check.",
    "Found on the way: TLS 1.2 clients that do not use session tickets grew each worker "
    "~12 KiB per handshake (40 -> 160 MiB after 20k connections): OpenSSL's server session "
    "cache on the long-lived listener context, bounded only by its default 20,480 sessions "
    "(stock gunicorn makes a context per socket). Done: the server contexts keep no "
    "sessions (mtls/sessioncache.py; tickets resume as before): +0.03 KiB per such "
    "connection, from +12.3 (2,000 connections, 2 workers).",
]
