"""Who may call the data plane: any valid API token, unless a deployment is marked public.

Every prediction passes here, so a token is looked up in the database once and then answered
from memory for `ttl` seconds: a revoked or expired token stops working within that time, and
a cached check is a hash and a dict look-up. Refusals are cached too, so a client retrying a
bad token does not become a query per request.
"""

import asyncio
import hashlib
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.auth.models import ApiToken
from app.core.db import utcnow

MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class Verdict:
    refusal: str | None  # None: allowed
    checked_at: float
    expires_at: float | None  # the token's own expiry, as a time.time() value


class TokenCache:
    def __init__(self, session_factory: sessionmaker[Session], ttl: float) -> None:
        self.session_factory = session_factory
        self.ttl = ttl
        self._verdicts: dict[bytes, Verdict] = {}

    def _lookup(self, digest: str) -> tuple[str | None, float | None]:
        with self.session_factory() as session:
            token = session.scalar(select(ApiToken).where(ApiToken.secret_sha256 == digest))
        if token is None:
            return "the bearer token is not valid", None
        if token.revoked_at is not None:
            return "the bearer token has been revoked", None
        expires = _timestamp(token.expires_at) if token.expires_at else None
        return None, expires

    async def refusal(self, authorization: bytes | None) -> str | None:
        """Why the request may not pass (None: it may)."""
        secret = authorization[7:].strip() if authorization else b""
        if not secret or authorization is None or authorization[:7].lower() != b"bearer ":
            return "send an API token as 'Authorization: Bearer <token>'"
        key = hashlib.sha256(secret).digest()
        now = time.time()
        verdict = self._verdicts.get(key)
        if verdict is None or now - verdict.checked_at >= self.ttl:
            refusal, expires = await asyncio.to_thread(self._lookup, key.hex())
            if len(self._verdicts) >= MAX_ENTRIES:
                self._verdicts.clear()
            verdict = self._verdicts[key] = Verdict(refusal, now, expires)
        if verdict.refusal is None and verdict.expires_at is not None and now >= verdict.expires_at:
            return "the bearer token has expired"
        return verdict.refusal


def _timestamp(moment: datetime) -> float:
    aware = moment if moment.tzinfo else moment.replace(tzinfo=utcnow().tzinfo)
    return aware.timestamp()
