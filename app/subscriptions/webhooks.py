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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import httpx

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


class RefusedDestination(Exception):
    """For good: not http(s), or an address outbound webhooks may not reach."""

    def __init__(self, message: str, *, address: str | None = None, kind: str | None = None):
        super().__init__(message)
        self.message, self.address, self.kind = message, address, kind


class UnresolvedDestination(Exception):
    """For now: the name does not resolve (DNS is down, or the record is not there yet)."""


Address = ipaddress.IPv4Address | ipaddress.IPv6Address
METADATA = {
    ipaddress.ip_address(a): "cloud metadata"
    for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
}
SHARED = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
ALLOW_HINT = (
    "outbound webhooks may not reach it; an operator can allow this host or network exactly "
    "with FLYWHEEL_WEBHOOK_ALLOWED_HOSTS"
)


@dataclass(frozen=True)
class Destination:
    """A URL with the addresses its host resolved to, each checked: connect only to these."""

    url: str
    host: str
    addresses: list[str]


def address_kind(address: Address) -> str | None:
    """What kind of non-public address this is, or None for a public one. IPv6 forms that
    carry an IPv4 address (::ffff:a.b.c.d, ::a.b.c.d, 6to4, NAT64) are judged by it."""
    if address in METADATA:
        return METADATA[address]
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return address_kind(embedded)
    for kind, test in (
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("shared (carrier-grade NAT)", address in SHARED),
        ("site-local", isinstance(address, ipaddress.IPv6Address) and address.is_site_local),
        ("reserved", address.is_reserved),
        ("not globally routable", not address.is_global),
    ):
        if test:
            return kind
    return None


def _embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64 or int(address) >> 32 == 0:  # NAT64, IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def resolve_destination(url: str, allowlist: list[str]) -> Destination:
    """Resolve the host once and check every address it has (server-side request forgery):
    private, loopback, link-local, metadata and reserved addresses are refused unless the host
    or a network holding the address is allowlisted. The caller connects to these addresses,
    so a name that answers differently the next time (DNS rebinding) changes nothing."""
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        raise RefusedDestination(f"{url!r} is not an http(s) URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise RefusedDestination(f"{url!r} has an invalid port: {exc}") from None
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise UnresolvedDestination(f"{host} does not resolve: {exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))
    if host not in allowlist:
        networks = [ipaddress.ip_network(a, strict=False) for a in allowlist if _is_network(a)]
        for text in addresses:
            address = ipaddress.ip_address(text)
            kind = address_kind(address)
            if kind is not None and not any(address in network for network in networks):
                said = f"{host} is" if host == text else f"{host} resolves to {address}, which is"
                raise RefusedDestination(
                    f"{said} a {kind} address; {ALLOW_HINT}", address=text, kind=kind
                )
    return Destination(url=url, host=host, addresses=addresses)


def pinned_request(
    client: httpx.Client,
    destination: Destination,
    address: str,
    content: bytes,
    headers: dict[str, str],
) -> httpx.Request:
    """A POST to `address` that still names the host: in the Host header, and for https in
    TLS SNI and certificate verification."""
    url = httpx.URL(destination.url)
    extensions = {"sni_hostname": destination.host} if url.scheme == "https" else {}
    return client.build_request(
        "POST",
        url.copy_with(host=address),
        content=content,
        headers={**headers, "host": url.netloc.decode("ascii")},
        extensions=extensions,
    )


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True
