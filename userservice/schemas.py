"""Marshmallow schemas: what goes out (``UserSchema``) and what may come in.

Input schemas refuse unknown fields (``RAISE``): a typo such as ``"emial"``
is a 400 naming the field rather than a silently ignored change.

Phone rule (E.164-ish, kept as typed so the page shows it the way it was
entered): a ``+``, then a country code starting 1-9, then digits optionally
grouped by single spaces or hyphens, 8 to 15 digits in all (E.164's maximum
is 15). ``+44 20 7946 0001`` and ``+12025550103`` pass; ``020 7946 0001``
(no country code), ``+44 (20) 7946`` (brackets) and ``+44  20`` do not.
"""

from __future__ import annotations

import re
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

NAME_MAX = 100
PAGE_LIMIT_DEFAULT = 20
PAGE_LIMIT_MAX = 100
OFFSET_MAX = 2**31  # far beyond any real table; keeps SQLite's integer happy

_PHONE = re.compile(r"\+[1-9][0-9]*(?:[ -][0-9]+)*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# JSON's \uD800-\uDFFF escapes can spell a lone surrogate: not a character,
# no UTF-8 form (RFC 8259 section 8.2), so SQLite could not even store it.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_NOT_UNICODE = "Not valid Unicode: a lone surrogate (\\ud800-\\udfff) is not a character."


def validate_phone(value: str) -> None:
    digits = sum(ch.isdigit() for ch in value)
    if _PHONE.fullmatch(value) is None or not 8 <= digits <= 15:
        raise ValidationError(
            "Not a valid phone number: use + and the country code, 8-15 digits, "
            "optionally grouped by single spaces or hyphens, e.g. +44 20 7946 0001."
        )


def validate_name(value: str) -> None:
    if not value.strip():
        raise ValidationError("Name must contain a non-space character.")
    if _CONTROL.search(value):
        raise ValidationError("Name must not contain control characters.")


class UserSchema(Schema):
    """A user as the API shows it."""

    id = fields.Integer()
    name = fields.String()
    email = fields.String()
    phone = fields.String()


class UserCreateSchema(Schema):
    """POST /users: every field required."""

    class Meta:
        unknown = RAISE

    name = fields.String(
        required=True,
        validate=[validate.Length(min=1, max=NAME_MAX), validate_name],
    )
    email = fields.Email(required=True, validate=validate.Length(max=254))
    phone = fields.String(required=True, validate=validate_phone)

    @validates_schema(skip_on_field_errors=False)  # reported with the others, all at once
    def _valid_unicode(self, data: dict[str, Any], **kwargs: Any) -> None:
        """Every field, whatever its own rule lets through (Email takes any Unicode domain)."""
        bad = [name for name, value in data.items() if _SURROGATE.search(str(value))]
        if bad:
            raise ValidationError({name: [_NOT_UNICODE] for name in bad})


class UserPatchSchema(UserCreateSchema):
    """PATCH /users/<id>: any non-empty subset of the create fields.

    Loaded with ``partial=True``; an empty object is refused because a PATCH
    that changes nothing is almost always a client bug.
    """

    @validates_schema
    def _not_empty(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ValidationError("Provide at least one of: name, email, phone.")


class PageQuerySchema(Schema):
    """``?limit=&offset=`` for GET /users."""

    class Meta:
        unknown = RAISE

    limit = fields.Integer(
        load_default=PAGE_LIMIT_DEFAULT, validate=validate.Range(min=1, max=PAGE_LIMIT_MAX)
    )
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=OFFSET_MAX))
