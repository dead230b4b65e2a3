"""Secrets we must read back (webhook HMAC keys) are stored encrypted with the server key.

Tokens are only ever hashed; a webhook secret cannot be, because verifying an HMAC needs it.
The key comes from FLYWHEEL_SECRET_KEY; embedded mode creates one under FLYWHEEL_HOME once.
"""

import base64
import hashlib
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from app.core.config import Settings
from app.core.errors import ServiceUnavailable


class SecretKeyMissing(ServiceUnavailable):
    """The server is misconfigured; the caller can do nothing but report it."""

    code = "secret_key_missing"


def server_key(settings: Settings) -> str:
    if settings.secret_key:
        return settings.secret_key
    path: Path = settings.home / "secret.key"
    if not settings.database_url:  # embedded mode: keep a key beside the embedded database
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
        return path.read_text().strip()
    raise SecretKeyMissing("set FLYWHEEL_SECRET_KEY: it encrypts webhook secrets at rest")


def _fernet(settings: Settings) -> Fernet:
    digest = hashlib.sha256(server_key(settings).encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def encrypt(settings: Settings, plaintext: str) -> str:
    return _fernet(settings).encrypt(plaintext.encode()).decode()


def decrypt(settings: Settings, token: str) -> str:
    try:
        return _fernet(settings).decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise SecretKeyMissing(
            "a stored secret cannot be decrypted: FLYWHEEL_SECRET_KEY changed since it was saved"
        ) from exc
