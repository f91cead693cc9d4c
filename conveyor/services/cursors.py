"""Signed list cursors: a position in one listing, which only this deployment can issue.

A cursor is the id of the last job of a page, with an HMAC tag over that id and the filters
of the listing, under a key derived from `CONVEYOR_SECRET_KEY`. A cursor that was made up,
altered, issued by another deployment (or before the key changed), or issued for other
filters is refused, so a listing never silently shows pages of something else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from conveyor.errors import BadRequestError, ConfigurationError
from conveyor.settings import SECRET_KEY_HINT, Settings

VERSION = b"\x01"
TAG_BYTES = 16
#: Separates the cursor key from every other use of the secret key (the tokens' HS256).
KEY_LABEL = b"conveyor list cursor v1"
#: A cursor's length: version, job id and tag in URL-safe base64 (33 bytes: no padding).
CURSOR_LENGTH = (1 + 16 + TAG_BYTES) * 4 // 3
_SHAPE = re.compile(rf"[A-Za-z0-9_-]{{{CURSOR_LENGTH}}}")


@dataclass(frozen=True)
class Scope:
    """What a cursor is bound to: the filters of its listing (not its page size or the
    fields it includes, which may change from page to page)."""

    statuses: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    parent_id: uuid.UUID | None = None

    @classmethod
    def of(
        cls, statuses: Iterable[str], types: Iterable[str], parent_id: uuid.UUID | None
    ) -> Scope:
        return cls(frozenset(statuses), frozenset(types), parent_id)

    def encode(self) -> bytes:
        """The same bytes for the same filters, however the query spelt them."""
        parent = str(self.parent_id) if self.parent_id else None
        return json.dumps([sorted(self.statuses), sorted(self.types), parent]).encode()


@dataclass(frozen=True)
class Cursors:
    """Issues and reads the cursors of job listings."""

    key: bytes

    @classmethod
    def of(cls, settings: Settings) -> Cursors:
        """Cursors under a key derived from the secret key; ConfigurationError without one."""
        if settings.secret_key is None:
            raise ConfigurationError(
                f"CONVEYOR_SECRET_KEY is not set: it signs list cursors; {SECRET_KEY_HINT}"
            )
        secret = settings.secret_key.get_secret_value().encode()
        return cls(hmac.new(secret, KEY_LABEL, hashlib.sha256).digest())

    def issue(self, last: uuid.UUID, scope: Scope) -> str:
        """The cursor of the page after the job `last`, in the listing `scope`."""
        body = VERSION + last.bytes
        raw = body + self._tag(body, scope)
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def read(self, cursor: str, scope: Scope) -> uuid.UUID:
        """The job a cursor continues after; 400 naming `cursor` unless this deployment issued
        it for `scope`."""
        if _SHAPE.fullmatch(cursor):
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            body, tag = raw[:-TAG_BYTES], raw[-TAG_BYTES:]
            if body[:1] == VERSION and hmac.compare_digest(tag, self._tag(body, scope)):
                return uuid.UUID(bytes=body[1:])
        raise BadRequestError(
            "invalid cursor: pass the next_cursor of a page of this listing, with the same "
            "status, type and parent filters (or start again without a cursor)",
            errors=[
                {
                    "field": "cursor",
                    "message": "not a cursor this server issued for these filters",
                }
            ],
        )

    def _tag(self, body: bytes, scope: Scope) -> bytes:
        message = body + b"\x00" + scope.encode()
        return hmac.new(self.key, message, hashlib.sha256).digest()[:TAG_BYTES]
