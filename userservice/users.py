"""``/users``: the API the Home Page calls, allowed to the Home Page's DN only.

Built per app by :func:`make_blueprint` because its DN policy comes from the
settings, and a Flask blueprint cannot take new hooks once registered.
"""

from __future__ import annotations

import json
import re
from typing import Any

from flask import Blueprint, Response, request, url_for
from marshmallow import Schema, ValidationError
from werkzeug.exceptions import NotFound

from mtls.flask import require_peer
from userservice.access import UsersAccess
from userservice.schemas import PageQuerySchema, UserCreateSchema, UserPatchSchema, UserSchema
from userservice.store import User, UserStore


class BadInput(Exception):
    """Client input that fails parsing or validation; becomes a 400 with field errors."""

    def __init__(self, errors: dict[str, Any]) -> None:
        super().__init__(errors)
        self.errors = errors


_user_schema = UserSchema()
_create_schema = UserCreateSchema()
_patch_schema = UserPatchSchema()
_page_schema = PageQuerySchema()

# SQLite's INTEGER PRIMARY KEY is a signed 64-bit rowid: a larger id names no
# row, and binding it would raise OverflowError (a 500) instead of a 404.
MAX_USER_ID = 2**63 - 1


def make_blueprint(
    store: UserStore, *, allowed_dn: re.Pattern[str], access: UsersAccess | None = None
) -> Blueprint:
    bp = Blueprint("users", __name__, url_prefix="/users")
    access = access or UsersAccess()
    if access.allowed_san_uri:
        setting = "USERSERVICE_ALLOWED_DN and USERSERVICE_ALLOWED_SAN_URI"
    else:
        setting = "USERSERVICE_ALLOWED_DN"
    san_uri = access.allowed_san_uri or None
    require_peer(bp, dn=allowed_dn, san_uri=san_uri, mode=access.mode, setting=setting)

    @bp.get("")
    def list_users() -> dict[str, Any]:
        page = _load(_page_schema, request.args.to_dict())
        limit, offset = page["limit"], page["offset"]
        users, total = store.list_users(limit=limit, offset=offset)
        following = offset + limit
        return {
            "items": [_dump(user) for user in users],
            "total": total,
            "limit": limit,
            "offset": offset,
            "next": (
                url_for(".list_users", limit=limit, offset=following) if following < total else None
            ),
        }

    @bp.post("")
    def create_user() -> tuple[dict[str, Any], int, dict[str, str]]:
        data = _load(_create_schema, _json_body())
        user = store.create_user(name=data["name"], email=data["email"], phone=data["phone"])
        location = url_for(".get_user", user_id=user.id)
        return _dump(user), 201, {"Location": location}

    @bp.get("/<int:user_id>")
    def get_user(user_id: int) -> dict[str, Any]:
        _check_id(user_id)
        return _dump(_found(store.get_user(user_id), user_id))

    @bp.patch("/<int:user_id>")
    def patch_user(user_id: int) -> dict[str, Any]:
        _check_id(user_id)
        changes = _load(_patch_schema, _json_body(), partial=True)
        return _dump(_found(store.update_user(user_id, changes), user_id))

    @bp.delete("/<int:user_id>")
    def delete_user(user_id: int) -> Response:
        _check_id(user_id)
        if not store.delete_user(user_id):
            raise NotFound(f"No user with id {user_id}.")
        return Response(status=204)

    return bp


def _dump(user: User) -> dict[str, Any]:
    dumped: dict[str, Any] = _user_schema.dump(user)
    return dumped


def _check_id(user_id: int) -> None:
    """An id beyond what SQLite can store is a user that does not exist, like any other."""
    if user_id > MAX_USER_ID:
        raise NotFound(f"No user with id {user_id}.")


def _found(user: User | None, user_id: int) -> User:
    if user is None:
        raise NotFound(f"No user with id {user_id}.")
    return user


def _json_body() -> Any:
    """The request body as JSON, or BadInput saying what is wrong with it.

    Reading the body enforces MAX_CONTENT_LENGTH (413) before any parsing.
    Refused as malformed besides what ``json`` refuses: NaN/Infinity (not
    JSON, RFC 8259 section 6), an object with a repeated name (RFC 8259
    section 4 leaves its meaning open: which ``name`` would we store?), and
    nesting deeper than the parser's recursion limit (``json`` is recursive;
    our objects are flat, so any depth that hits it is garbage, not a user).
    Integers over 4,300 digits are refused by Python itself (ValueError).
    """
    if not request.is_json:
        raise BadInput({"_schema": ["Content-Type must be application/json."]})
    raw = request.get_data(cache=False)
    try:
        return json.loads(raw, parse_constant=_refuse_constant, object_pairs_hook=_unique_names)
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, NaN/Infinity, repeated names
        raise BadInput({"_schema": [f"Malformed JSON: {exc}."]}) from exc
    except RecursionError as exc:
        raise BadInput({"_schema": ["Malformed JSON: nested too deeply."]}) from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        repeated = sorted({name for name, _ in pairs if sum(n == name for n, _ in pairs) > 1})
        raise ValueError(f"repeated name in an object: {', '.join(map(repr, repeated))}")
    return obj


def _load(schema: Schema, data: Any, *, partial: bool = False) -> dict[str, Any]:
    try:
        loaded: dict[str, Any] = schema.load(data, partial=partial)
    except ValidationError as exc:
        errors = exc.messages  # a dict keyed by field, "_schema" for whole-input errors
        raise BadInput(errors if isinstance(errors, dict) else {"_schema": errors}) from exc
    return loaded
