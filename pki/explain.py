"""What the server and the DN policy would do with this client certificate, step by step.

`pki verify` answers yes or no with the strict verifier; an operator asking
"why was homepage refused?" needs the server's own view: every check in the
order the handshake and then the app make it, and which one decides. So the
rules are the server's, never re-implemented here: the path to the trust
bundle as OpenSSL builds it (mtls.x509rules.handshake_problems), the CRL as
the server loads it (mtls.revocation.parse_crl_file) and trusts it
(mtls.x509rules.crl_problems), validity (mtls.x509rules.validity_problem),
the DN as policies see it (mtls.dn.format_dn) and the policy compiled by
mtls.policy.compile_dn_policy and matched with ``fullmatch``.

The order is OpenSSL's (``verify_chain`` in crypto/x509/x509_vfy.c): build
the path to a trusted root, check the purpose (``check_extensions``), check
revocation, then signatures and validity periods (``internal_verify``). The
server stops at the first failure; we still evaluate the later checks and
mark them "not reached", so one run shows everything that is wrong.

Each failure carries the reason label of ``mtls_handshakes_total`` (SPEC
"Operating it"), so an explanation can be matched to the metrics.

Deliberately NOT covered: the TLS layer itself (versions, ciphers, PROXY
headers), ``MTLS_CLIENT_AUTH=optional`` (a missing certificate is never the
question here), SAN policies, and what the app answers once a request passes.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from mtls import x509rules
from mtls.dn import format_dn
from mtls.errors import ChainRefused
from mtls.policy import NOT_RECOGNIZED
from mtls.x509rules import day
from pki.inspect import eku_name, reason_name

Outcome = Literal["served", "forbidden", "refused", "handshake_passed"]
WIDTH = 56  # where the dotted leaders end in the text rendering

#: The ``--json`` section of the command's help: every key, documented once.
JSON_HELP = """\
--json prints one object: cert, subject (the DN as policies see it), checks (a
list of {step, check, ok (true, false, or null for "not checked"), result,
reason (the mtls_handshakes_total reason label of a failure, else null),
decides}), outcome ("served", "forbidden", "refused" or "handshake_passed"
when no --policy was given), reason (the deciding check's label), verdict (the
sentence), notes. Exit status: 0 served or passed, 1 refused or forbidden."""


@dataclass(frozen=True)
class Check:
    """One check: what it is, its result, and the metric reason label when it failed."""

    check: str
    ok: bool | None
    result: str
    reason: str | None = None
    #: Short words for the verdict line ("revoked", "unknown CA").
    short: str = ""


@dataclass(frozen=True)
class Crls:
    """The CRL file as the server would load it: its CRLs and what parsing it found wrong."""

    path: Path
    crls: Sequence[x509.CertificateRevocationList]
    problems: Sequence[str] = ()


@dataclass(frozen=True)
class Explanation:
    cert: str
    subject: str
    checks: tuple[Check, ...]
    handshake_steps: int  # checks[:handshake_steps] are the handshake's, the rest the app's
    decides: int | None  # index into checks
    outcome: Outcome
    verdict: str
    notes: tuple[str, ...] = field(default=())


def explain(
    presented: Sequence[x509.Certificate],
    *,
    cert_file: str,
    roots: Sequence[x509.Certificate],
    roots_from: str,
    crls: Crls | None,
    policy: re.Pattern[str] | None,
    known_intermediates: Sequence[x509.Certificate] = (),
    now: datetime.datetime | None = None,
) -> Explanation:
    """Explain how a server trusting ``roots`` treats a client presenting ``presented``.

    ``presented`` is what the client sends: its leaf, then its chain (the
    NAME-chain.crt file). ``roots`` is MTLS_CA_CERTS. ``known_intermediates``
    (the CA directory's global.crt) are never used to accept; they only tell
    "the client did not send its intermediate" from "issued by a CA we do not
    know".
    """
    when = now or datetime.datetime.now(datetime.UTC)
    leaf = presented[0]
    anchors = [c for c in roots if x509rules.is_root(c)]
    # The server's store is the whole bundle: a non-root CA in it helps build paths.
    pool = [*presented[1:], *(c for c in roots if not x509rules.is_root(c))]
    issuer = next(
        (c for c in [*pool, *anchors, *known_intermediates] if x509rules.issued_by(leaf, c)), None
    )
    handshake = [
        _chain(leaf, pool, anchors, known_intermediates, when, cert_file, roots_from, issuer),
        _purpose(leaf),
        _revocation(leaf, issuer, crls, when),
        _validity(leaf, when),
    ]
    subject = format_dn(leaf.subject)
    app = [Check("subject DN as policies see it", None, subject), _policy(subject, policy)]
    checks = (*handshake, *app)
    decides = next((i for i, c in enumerate(checks) if c.ok is False), None)
    outcome, verdict = _verdict(checks, decides, len(handshake), policy)
    passed_handshake = decides is None or decides >= len(handshake)
    notes = _strict_note(leaf, pool, anchors, when) if passed_handshake else ()
    return Explanation(cert_file, subject, checks, len(handshake), decides, outcome, verdict, notes)


def render_text(explanation: Explanation) -> list[str]:
    """``1. chain to root.crt ........ ok``, one line per check, then the verdict."""
    lines = [f"{explanation.cert}: {explanation.subject}"]
    for index, check in enumerate(explanation.checks):
        result = check.result
        if explanation.decides is not None and index > explanation.decides:
            result += " (not reached)"
        if index == explanation.decides:
            where = "refused at the handshake" if index < explanation.handshake_steps else "403"
            result += f" <- decides: {where}"
        head = f"{index + 1}. {check.check} "
        lines.append(f"{head}{'.' * max(3, WIDTH - len(head))} {result}")
    lines += [f"note: {n}" for n in explanation.notes]
    lines.append(f"verdict: {explanation.verdict}")
    return lines


def render_json(explanation: Explanation) -> dict[str, Any]:
    """`pki explain --json`; the keys are listed in JSON_HELP, keep the two in step."""
    checks = [
        {"step": i + 1, **asdict(c), "decides": i == explanation.decides}
        for i, c in enumerate(explanation.checks)
    ]
    for check in checks:
        del check["short"]
    decider = explanation.checks[explanation.decides] if explanation.decides is not None else None
    return {
        "cert": explanation.cert,
        "subject": explanation.subject,
        "checks": checks,
        "outcome": explanation.outcome,
        "reason": decider.reason if decider else None,
        "verdict": explanation.verdict,
        "notes": list(explanation.notes),
    }


# --- the handshake's checks, in OpenSSL's order -----------------------------------------------


def _chain(
    leaf: x509.Certificate,
    pool: list[x509.Certificate],
    anchors: list[x509.Certificate],
    known: Sequence[x509.Certificate],
    when: datetime.datetime,
    cert_file: str,
    roots_from: str,
    issuer: x509.Certificate | None,
) -> Check:
    title = f"chain to {Path(roots_from).name}"
    problems = x509rules.handshake_problems(
        leaf, intermediates=pool, roots=anchors, now=when, chain_from=cert_file,
        roots_from=roots_from,
    )  # fmt: skip
    if not problems:
        via = f"ok (issuer '{format_dn(issuer.subject)}')" if issuer is not None else "ok"
        return Check(title, True, via)
    completed = known and not x509rules.handshake_problems(
        leaf, intermediates=[*pool, *known], roots=anchors, now=when
    )
    if completed:
        return Check(
            title, False,
            f"INCOMPLETE: {cert_file} holds no intermediate for '{format_dn(leaf.issuer)}'; "
            "the client must send its chain (NAME-chain.crt: leaf + global.crt), not the leaf "
            "alone",
            "chain_incomplete", "chain incomplete (the client sent no intermediate)",
        )  # fmt: skip
    if problems[0].startswith("untrusted chain"):
        return Check(title, False, f"UNKNOWN CA: {problems[0]}", "unknown_ca", "unknown CA")
    return Check(title, False, f"REFUSED: {problems[0]}", "other", "invalid chain")


def _purpose(leaf: x509.Certificate) -> Check:
    """OpenSSL's check_purpose_ssl_client: clientAuth when there is an EKU; a signing key usage."""
    title = "purpose: clientAuth (TLS client)"
    ekus = x509rules.extension(leaf, x509.ExtendedKeyUsage)
    if ekus is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in ekus:
        has = ", ".join(eku_name(o) for o in ekus) or "none"
        return Check(
            title, False,
            f"BAD PURPOSE: extended key usage is {has}, no clientAuth; issue a client "
            "certificate (`pki issue NAME --client`, or --both)",
            "bad_purpose", "bad purpose (no clientAuth)",
        )  # fmt: skip
    usage = x509rules.extension(leaf, x509.KeyUsage)
    if usage is not None and not (usage.digital_signature or usage.key_agreement):
        return Check(
            title, False,
            "BAD PURPOSE: keyUsage allows neither digitalSignature nor keyAgreement",
            "bad_purpose", "bad purpose (key usage)",
        )  # fmt: skip
    return Check(title, True, "ok" if ekus is not None else "ok (no extended key usage: any)")


def _revocation(
    leaf: x509.Certificate,
    issuer: x509.Certificate | None,
    crls: Crls | None,
    when: datetime.datetime,
) -> Check:
    """VERIFY_CRL_CHECK_LEAF: with MTLS_CRLFILE set, the leaf's issuer must have a fresh CRL."""
    if crls is None:
        return Check("revocation", None, "not checked: no CRL (the server runs without one)")
    name = crls.path.name
    if crls.problems:
        return Check(
            f"revocation ({name})", False,
            f"the server refuses this MTLS_CRLFILE at start-up: {crls.problems[0]}",
            "other", f"{name} cannot be loaded",
        )  # fmt: skip
    if issuer is None:
        return Check(f"revocation ({name})", None, "not checked: the leaf's issuer is unknown")
    own = [c for c in crls.crls if c.issuer == leaf.issuer]
    if not own:
        return Check(
            f"revocation ({name})", False,
            f"UNKNOWN: {name} holds no CRL from '{format_dn(leaf.issuer)}', so OpenSSL refuses "
            "the certificate (unable to get certificate CRL); run `pki crl --dir DIR`",
            "other", "revocation unknown (no CRL for its issuer)",
        )  # fmt: skip
    crl = max(own, key=lambda c: c.last_update_utc)
    number = x509rules.crl_number(crl)
    title = f"revocation ({name} #{'?' if number is None else number}, next update "
    title += f"{crl.next_update_utc:%Y-%m-%d})" if crl.next_update_utc else "never)"
    signed_by = f"the leaf's issuer '{format_dn(issuer.subject)}'"
    problems = x509rules.crl_problems(crl, [issuer], when, signed_by=signed_by)
    if problems:
        stale = x509rules.stale_crl(crl.next_update_utc, when) is not None
        label = "crl_stale" if stale and len(problems) == 1 else "other"
        short = "CRL stale" if label == "crl_stale" else "CRL not trusted"
        return Check(title, False, f"CRL NOT USABLE: {problems[0]}", label, short)
    entry = crl.get_revoked_certificate_by_serial_number(leaf.serial_number)
    if entry is not None:
        return Check(
            title, False, f"REVOKED on {day(entry.revocation_date_utc)} ({reason_name(entry)})",
            "revoked", "revoked",
        )  # fmt: skip
    return Check(title, True, "not revoked")


def _validity(leaf: x509.Certificate, when: datetime.datetime) -> Check:
    title = (
        f"validity ({leaf.not_valid_before_utc:%Y-%m-%d} to {leaf.not_valid_after_utc:%Y-%m-%d})"
    )
    problem = x509rules.validity_problem(leaf, when)
    if problem is None:
        left = leaf.not_valid_after_utc - when
        return Check(title, True, f"ok ({_span(left)} left)")
    expired = when > leaf.not_valid_after_utc
    label, short = ("expired", "expired") if expired else ("not_yet_valid", "not yet valid")
    return Check(title, False, problem.upper() if expired else problem, label, short)


# --- the app's ---------------------------------------------------------------------------------


def _policy(subject: str, policy: re.Pattern[str] | None) -> Check:
    if policy is None:
        return Check(
            "DN policy", None, "not checked: pass --policy REGEX (e.g. USERSERVICE_ALLOWED_DN)"
        )
    title = f"DN policy '{policy.pattern}' (fullmatch)"
    if policy.fullmatch(subject):
        return Check(title, True, "allow")
    return Check(title, False, f"deny: 403 {NOT_RECOGNIZED}", None, "denied by policy")


def _verdict(
    checks: Sequence[Check], decides: int | None, handshake_steps: int, policy: object
) -> tuple[Outcome, str]:
    if decides is not None and decides < handshake_steps:
        return "refused", f"would be refused at the handshake: {checks[decides].short}"
    if decides is not None:
        return "forbidden", f"would pass the handshake, then 403 {NOT_RECOGNIZED}"
    if policy is None:
        return (
            "handshake_passed",
            "would pass the handshake (no --policy: the app's answer unknown)",
        )
    return "served", "would be served"


def _strict_note(
    leaf: x509.Certificate,
    pool: list[x509.Certificate],
    anchors: list[x509.Certificate],
    when: datetime.datetime,
) -> tuple[str, ...]:
    """The server (OpenSSL) accepts it; say so when the strict verifier of `pki verify` does not."""
    try:
        x509rules.verify_chain(leaf, roots=anchors, intermediates=pool, purpose="client", now=when)
    except ChainRefused as exc:
        return (f"the server accepts it, but stricter clients may not: {exc}",)
    return ()


def _span(delta: datetime.timedelta) -> str:
    if delta >= datetime.timedelta(days=2):
        return f"{delta.days} days"
    hours = int(delta.total_seconds() // 3600)
    return f"{hours} h" if hours else f"{int(delta.total_seconds() // 60)} min"
