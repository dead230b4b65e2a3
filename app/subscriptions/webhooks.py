"""Standard Webhooks on the way out: signing, when to try again, and where not to send.

Signature: `v1,` + base64(HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")) with
the key being the base64 part of a `whsec_` secret (https://www.standardwebhooks.com/)."""

import base64
import hashlib
import hmac
import ipaddress
import random
import secrets
import socket
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

MAX_RETRY_AFTER = timedelta(hours=1)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def backoff(attempt: int, base_seconds: float, cap_seconds: float, rng: random.Random) -> float:
    """Exponential with full jitter around it (0.5x-1.5x), so a recovering endpoint is not
    hit by every delivery at the same instant."""
    return float(min(base_seconds * 2 ** (attempt - 1), cap_seconds) * rng.uniform(0.5, 1.5))


def retry_after(value: str | None, now: datetime) -> timedelta | None:
    """Seconds or an HTTP date; capped, and ignored when it makes no sense."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        wait = timedelta(seconds=int(value))
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        wait = when.astimezone(UTC) - now
    return min(max(wait, timedelta(0)), MAX_RETRY_AFTER)


def refused_destination(url: str, allowlist: list[str]) -> str | None:
    """Why this URL may not be called, or None. Private, loopback, link-local and reserved
    addresses are refused (server-side request forgery) unless a host or network is
    allowlisted; the check resolves the name, so a public name pointing inside is refused too."""
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        return f"{url!r} is not an http(s) URL"
    if host in allowlist:
        return None
    try:
        infos = socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        return f"{host} does not resolve: {exc}"
    networks = [ipaddress.ip_network(a, strict=False) for a in allowlist if _is_network(a)]
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if any(address in network for network in networks):
            continue
        if not address.is_global:
            return (
                f"{host} resolves to {address}, a private address; allowlist it with "
                "FLYWHEEL_WEBHOOK_ALLOWED_HOSTS to send there"
            )
    return None


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True
