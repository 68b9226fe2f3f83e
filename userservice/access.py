"""Who may call ``/users`` beyond its DN: SPIFFE IDs and the policy mode (SPEC).

Apart from :mod:`userservice.settings` for now (one declaration per setting,
``mtls.envconfig``): ``USERSERVICE_ALLOWED_SAN_URI`` is a comma list of
SPIFFE IDs (``*`` = one path segment, :mod:`mtls.rules`), required IN
ADDITION to ``USERSERVICE_ALLOWED_DN``; unset means no SAN rule.
``USERSERVICE_POLICY_MODE=report`` serves what enforce would deny and logs it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from mtls.envconfig import Invalid, choice, env, read_env
from mtls.errors import PolicyError
from mtls.rules import MODES, Mode, compile_rules


def spiffe_id_list(var: str, raw: str) -> tuple[str, ...]:
    """A comma list of SPIFFE ID rules, each checked now (a bad one names ``var``)."""
    items = tuple(item.strip() for item in raw.split(","))
    try:
        compile_rules(san_uri=items, setting=var)
    except PolicyError as exc:
        raise Invalid(str(exc)) from None
    return items


@dataclass(frozen=True)
class UsersAccess:
    allowed_san_uri: tuple[str, ...] = env(
        "USERSERVICE_ALLOWED_SAN_URI",
        spiffe_id_list,
        (),
        "SPIFFE IDs, comma-separated, one of which /users callers must also carry",
    )
    mode: Mode = env(
        "USERSERVICE_POLICY_MODE",
        choice({mode: mode for mode in MODES}),
        "enforce",
        "enforce (deny) or report (serve, log and count would-be denials)",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> UsersAccess:
        return read_env(cls, os.environ if environ is None else environ, title="User Service")
