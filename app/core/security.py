"""Token secrets and roles. Secrets are only ever stored as sha256 digests."""

import enum
import hashlib
import hmac
import secrets

TOKEN_PREFIX = "fw_"  # noqa: S105 - a recognisable prefix, not a secret


class Role(enum.StrEnum):
    viewer = "viewer"
    editor = "editor"
    deployer = "deployer"
    admin = "admin"

    @property
    def rank(self) -> int:
        return ROLE_ORDER.index(self)

    def allows(self, required: "Role") -> bool:
        return self.rank >= required.rank


ROLE_ORDER: tuple[Role, ...] = (Role.viewer, Role.editor, Role.deployer, Role.admin)


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def digests_match(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("ascii"), b.encode("ascii"))
