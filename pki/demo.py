"""The demo PKI: our CA, the two services' certificates, a denied caller, and one rogue.

`make demo` runs this on every start, so a complete set is kept as it is
(a second run costs a few file reads) unless a certificate in it has expired
or ``force`` is given. The CRL of a kept set is re-signed when it is within
a day of its nextUpdate, because servers that load an expired CRL refuse
every client.
"""

from __future__ import annotations

import datetime

from mtls.dn import format_dn
from mtls.x509rules import validity_problem
from pki import authority, store
from pki.directory import (
    CA_FILES,
    CaDir,
    LeafRequest,
    add_ca,
    add_crl,
    add_leaf,
    leaf_files,
    new_ca,
    new_leaf,
    plan_crl,
)
from pki.errors import StoreError
from pki.index import entry_for

_LOOPBACK = ("127.0.0.1", "::1")

#: name, request, why it exists. The DNs are what the services' policies match.
LEAVES: tuple[tuple[LeafRequest, str], ...] = (
    (
        LeafRequest(
            "userservice",
            "server",
            cn="userservice.internal",
            ou="Services",
            org="Example",
            dns=("userservice.internal", "localhost"),
            ips=_LOOPBACK,
        ),
        "the User Service's server certificate",
    ),
    (
        LeafRequest(
            "homepage",
            "both",
            cn="homepage.internal",
            ou="Services",
            org="Example",
            dns=("homepage.internal", "localhost"),
            ips=_LOOPBACK,
        ),
        "the Home Page's server AND client certificate (the guide reuses it)",
    ),
    (
        LeafRequest("eventservice", "client", cn="eventservice.internal", ou="Services"),
        "trusted CA, but /users denies its DN: 403",
    ),
    (
        LeafRequest("ops", "client", cn="ops.internal", ou="Operators"),
        "an operator, for the Home Page's /internal/* policy",
    ),
    (
        LeafRequest("lb", "client", cn="lb.internal", ou="LoadBalancers"),
        "the load balancer's health-check identity",
    ),
)
ROGUE = "rogue"
ROGUE_CA_FILE = "rogue-ca.crt"
FILES = (
    *CA_FILES,
    "crl.pem",
    "index.json",
    *(f for request, _ in LEAVES for f in leaf_files(request.name)),
    *leaf_files(ROGUE),
    ROGUE_CA_FILE,
)


def plan_demo(
    ca: CaDir, *, force: bool = False, now: datetime.datetime | None = None
) -> store.Plan:
    when = now or datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    present = [f for f in FILES if (ca / f).exists()]
    if len(present) == len(FILES) and not force:
        expired = _expired(ca, when)
        if not expired:
            return _keep(ca, when)
        rebuilding = f"rebuilding the demo PKI in {ca.path}: {', '.join(expired)}"
    elif present and not force:
        raise StoreError(
            f"{ca.path} holds part of a PKI ({', '.join(present[:5])}) but not the complete "
            "demo set; pass --force to replace it with a fresh demo PKI"
        )
    else:
        rebuilding = f"demo PKI in {ca.path}:"
    plan = _build(ca, when)
    plan.report.insert(0, rebuilding)
    return plan


def _build(ca: CaDir, now: datetime.datetime) -> store.Plan:
    plan = store.Plan()
    root, global_ca, index = new_ca(now=now)
    add_ca(plan, ca, root, global_ca)
    plan.report.append(
        f"  {'CA':<13} root.crt ({format_dn(root.cert.subject)}), "
        f"global.crt ({format_dn(global_ca.cert.subject)}), crl.pem"
    )
    issued = {}
    for request, why in LEAVES:
        leaf = issued[request.name] = new_leaf(global_ca, request, now=now)
        add_leaf(plan, ca, request.name, leaf)
        index = index.add(entry_for(request.name, leaf.cert))
        plan.report.append(f"  {request.name:<13} {format_dn(leaf.cert.subject)}  ({why})")
    add_crl(plan, ca, global_ca, index, now=now)
    # Same subject as homepage, signed by a CA we never trust: names alone grant nothing.
    rogue_root = authority.build_root(
        name=authority.make_name("Rogue Root CA", o="Example"), now=now
    )
    rogue = authority.build_leaf(
        rogue_root,
        name=issued["homepage"].cert.subject,
        profile="both",
        dns=("homepage.internal", "localhost"),
        ips=_LOOPBACK,
        now=now,
    )
    add_leaf(plan, ca, ROGUE, rogue)
    plan.add(ca / ROGUE_CA_FILE, store.encode_certs([rogue_root.cert]))
    plan.report += [
        f"  {ROGUE:<13} {format_dn(rogue.cert.subject)}  (homepage's DN from its own CA "
        f"{ROGUE_CA_FILE}: must be refused at handshake)",
        "root.key is only needed to renew global.crt; outside a demo it lives offline.",
        f"see what a DN policy matches: pki inspect {ca / 'homepage-chain.crt'}",
    ]
    return plan


def _expired(ca: CaDir, now: datetime.datetime) -> list[str]:
    certs = ["root.crt", "global.crt", *(f"{r.name}.crt" for r, _ in LEAVES), f"{ROGUE}.crt"]
    found = []
    for name in certs:
        why = validity_problem(store.load_cert(ca / name), now)
        if why is not None:
            found.append(f"{name} is outside its validity period ({why})")
    return found


def _keep(ca: CaDir, now: datetime.datetime) -> store.Plan:
    crl = store.load_crl(ca / "crl.pem")
    due = crl.next_update_utc is None or crl.next_update_utc - now < datetime.timedelta(days=1)
    plan = plan_crl(ca, now=now) if due else store.Plan()
    plan.report.insert(
        0,
        f"{ca.path} already holds the complete demo PKI; kept it "
        "(`pki demo --force` makes a new one)",
    )
    return plan
