"""Inbound webhooks: verify who sent them and turn their payloads into small, typed events.

Pure functions over (headers, raw body) so the HTTP layer stays thin and everything here is
testable without a server. Signatures are checked over the *raw* bytes, before any parsing.
"""

import fnmatch
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import unquote_plus, urlsplit

ZERO_SHA = re.compile(r"0{40}|0{64}")
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}", re.ASCII)
_UNIX_SECONDS = re.compile(r"[0-9]{1,12}", re.ASCII)


class WebhookError(ValueError):
    """A refused delivery; `status` is the HTTP status the endpoint should answer with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class GitPush:
    """Provider-neutral facts about a push or merge; `actionable` says whether to build."""

    provider: Literal["github", "gitlab"]
    delivery_id: str
    event: str
    ref: str | None
    branch: str | None
    commit: str | None
    repository: str | None
    actionable: bool
    reason: str
    pusher: str | None


@dataclass(frozen=True)
class ObjectEvent:
    """A newly created object; `delivery_id` is stable across redeliveries for dedupe."""

    delivery_id: str
    bucket: str | None
    key: str
    etag: str | None
    version_id: str | None
    sequencer: str | None
    uri: str
    size: int | None
    event_name: str | None
    format: str | None = None


# --- signatures ---------------------------------------------------------------------------


def _require_secret(secret: str) -> None:
    # An empty secret would make every signature forgeable: fail closed rather than accept.
    if not secret:
        raise WebhookError("webhook secret is not configured", 401)


def _check_sha256_header(header: str | None, key: str, message: bytes, name: str) -> None:
    _require_secret(key)
    if not header:
        raise WebhookError(f"missing {name} header", 401)
    scheme, _, digest = header.strip().partition("=")
    if scheme != "sha256" or not _HEX_SHA256.fullmatch(digest):
        raise WebhookError(f"malformed {name} header: expected 'sha256=<64 hex digits>'", 401)
    expected = hmac.new(key.encode("utf-8"), message, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode("ascii"), digest.lower().encode("ascii")):
        raise WebhookError(f"{name} does not match the payload", 401)


def _check_token(given: str | None, secret: str, what: str) -> None:
    _require_secret(secret)
    if given is None or not hmac.compare_digest(given.encode("utf-8"), secret.encode("utf-8")):
        raise WebhookError(f"missing or wrong {what}", 401)


def verify_github(body: bytes, signature_header: str | None, secret: str) -> None:
    """X-Hub-Signature-256: HMAC-SHA256 of the raw body, compared in constant time."""
    _check_sha256_header(signature_header, secret, body, "X-Hub-Signature-256")


def verify_gitlab(token_header: str | None, secret: str) -> None:
    """GitLab sends the shared secret itself in X-Gitlab-Token; compare in constant time."""
    _check_token(token_header, secret, "X-Gitlab-Token")


def verify_bearer(authorization_header: str | None, secret: str) -> None:
    """`Authorization: Bearer <secret>` as MinIO's webhook auth_token sends it."""
    scheme, _, token = (authorization_header or "").strip().partition(" ")
    given = token.strip() if scheme.lower() == "bearer" else None
    _check_token(given, secret, "bearer token")


def verify_generic(
    body: bytes,
    signature_header: str | None,
    timestamp_header: str | None,
    secret: str,
    *,
    now: float,
    tolerance_s: int = 300,
) -> None:
    """Signed `"{timestamp}." + body` so a captured delivery cannot be replayed later."""
    if not timestamp_header or not _UNIX_SECONDS.fullmatch(timestamp_header.strip()):
        raise WebhookError("missing or malformed X-Flywheel-Timestamp (unix seconds)", 401)
    ts = timestamp_header.strip()
    _check_sha256_header(signature_header, secret, f"{ts}.".encode() + body, "X-Flywheel-Signature")
    # Both directions: a stale one may be a replay, a far-future one would stay valid too long.
    if abs(now - int(ts)) > tolerance_s:
        raise WebhookError(f"X-Flywheel-Timestamp is more than {tolerance_s}s from now", 401)


# --- payload helpers -----------------------------------------------------------------------


def _load_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise WebhookError(f"body is not valid JSON: {exc}", 400) from exc
    if not isinstance(data, dict):
        raise WebhookError("body must be a JSON object", 400)
    return data


def _obj(data: Mapping[str, Any], key: str, where: str = "") -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise WebhookError(f"missing or non-object field '{where}{key}'", 400)
    return value


def _str(data: Mapping[str, Any], key: str, where: str = "") -> str | None:
    """An optional string field: absent/empty is None, any other type is malformed."""
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise WebhookError(f"field '{where}{key}' must be a string", 400)
    return value or None


def _req(data: Mapping[str, Any], key: str, where: str = "") -> str:
    value = _str(data, key, where)
    if value is None:
        raise WebhookError(f"missing field '{where}{key}'", 400)
    return value


def _int(data: Mapping[str, Any], key: str, where: str = "") -> int | None:
    value = data.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise WebhookError(f"field '{where}{key}' must be an integer", 400)
    return value


def _nested(data: Mapping[str, Any], path: str) -> str | None:
    """Optional 'a.b.c' lookup for informational fields: missing or mistyped is just absent."""
    node: Any = data
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, str) and node else None


def _header(headers: Mapping[str, str], *names: str) -> str | None:
    lowered = {k.lower(): v for k, v in headers.items()}
    return next((v.strip() for n in names if (v := lowered.get(n.lower(), "")).strip()), None)


# --- git providers -------------------------------------------------------------------------


def _push(base: GitPush, payload: dict[str, Any], pusher: str | None) -> GitPush:
    """Only branch updates build; tag pushes and deletions are recorded, never run."""
    ref, after = _req(payload, "ref"), _req(payload, "after")
    branch = ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else None
    deleted = payload.get("deleted") is True or bool(ZERO_SHA.fullmatch(after))
    if deleted:
        reason = "branch deletion" if branch else "ref deletion"
    elif ref.startswith("refs/tags/"):
        reason = "tag push"
    else:
        reason = "push" if branch else f"push to non-branch ref {ref}"
    commit = None if deleted else after
    base = replace(base, ref=ref, branch=branch, commit=commit, pusher=pusher)
    return replace(base, actionable=reason == "push", reason=reason)


def _merge(base: GitPush, target: str, commit: str | None, merged: bool, reason: str) -> GitPush:
    """A PR/MR event builds the target branch at the merge commit, and only once merged."""
    if merged and commit is None:
        raise WebhookError(f"{reason} names no resulting commit", 422)
    commit = commit if merged else None
    ref = f"refs/heads/{target}"
    return replace(base, ref=ref, branch=target, commit=commit, actionable=merged, reason=reason)


def parse_github(headers: Mapping[str, str], body: bytes) -> GitPush:
    """GitHub push / pull_request deliveries; other events parse but are never actionable."""
    event = _header(headers, "X-GitHub-Event")
    delivery = _header(headers, "X-GitHub-Delivery")
    if event is None or delivery is None:
        raise WebhookError("missing X-GitHub-Event or X-GitHub-Delivery header", 400)
    payload = _load_object(body)
    repository = _nested(payload, "repository.clone_url")
    sender = _nested(payload, "sender.login")
    reason = "ping" if event == "ping" else f"event {event!r} ignored"
    base = GitPush("github", delivery, event, None, None, None, repository, False, reason, sender)
    if event == "push":
        return _push(base, payload, _nested(payload, "pusher.name") or sender)
    if event != "pull_request":
        return base
    pr = _obj(payload, "pull_request")
    action = _req(payload, "action")
    target = _req(_obj(pr, "base", "pull_request."), "ref", "pull_request.base.")
    merged = action == "closed" and pr.get("merged") is True
    reason = f"pull request {action}"
    if action == "closed":
        reason = "merged pull request" if merged else "pull request closed without merge"
    base = replace(base, pusher=_nested(pr, "merged_by.login") or sender)
    return _merge(base, target, _str(pr, "merge_commit_sha", "pull_request."), merged, reason)


def parse_gitlab(headers: Mapping[str, str], body: bytes) -> GitPush:
    """GitLab Push Hook / Merge Request Hook; an MR counts only on its 'merge' action."""
    raw_event = _header(headers, "X-Gitlab-Event")
    if raw_event is None:
        raise WebhookError("missing X-Gitlab-Event header", 400)
    delivery = _header(headers, "Idempotency-Key", "X-Gitlab-Event-UUID")
    if delivery is None:
        raise WebhookError("missing Idempotency-Key or X-Gitlab-Event-UUID header", 400)
    # "Push Hook" -> "push", "Tag Push Hook" -> "tag_push", "Merge Request Hook" -> ...
    event = raw_event.lower().removesuffix(" hook").strip().replace(" ", "_")
    payload = _load_object(body)
    repo = _nested(payload, "project.git_http_url") or _nested(payload, "repository.git_http_url")
    user = _nested(payload, "user.username")
    reason = f"event {raw_event!r} ignored"
    base = GitPush("gitlab", delivery, event, None, None, None, repo, False, reason, user)
    if event in ("push", "tag_push"):
        return _push(base, payload, _str(payload, "user_username") or _str(payload, "user_name"))
    if event != "merge_request":
        return base
    attrs, at = _obj(payload, "object_attributes"), "object_attributes."
    action = _str(attrs, "action", at)
    merged = action == "merge"
    # Fast-forward merges have no merge commit; squash-only ones land as the squash commit.
    commit = (
        _str(attrs, "merge_commit_sha", at)
        or _str(attrs, "squash_commit_sha", at)
        or _nested(attrs, "last_commit.id")
    )
    reason = "merged merge request" if merged else f"merge request {action or 'event'}"
    return _merge(base, _req(attrs, "target_branch", at), commit, merged, reason)


def branch_matches(branch: str, pattern: str) -> bool:
    """Case-sensitive glob ('main', 'release/*', '*'); note '*' also matches across '/'."""
    return bool(pattern) and fnmatch.fnmatchcase(branch, pattern)


# --- object stores -------------------------------------------------------------------------


def _record(record: Any, i: int) -> ObjectEvent | None:
    """One S3/MinIO record; None for anything but ObjectCreated:* (removals, access, ...)."""
    where = f"Records[{i}]."
    if not isinstance(record, dict):
        raise WebhookError(f"'Records[{i}]' must be an object", 400)
    name = _req(record, "eventName", where)
    if not name.removeprefix("s3:").startswith("ObjectCreated:"):
        return None
    s3 = _obj(record, "s3", where)
    bucket = _req(_obj(s3, "bucket", f"{where}s3."), "name", f"{where}s3.bucket.")
    obj, at = _obj(s3, "object", f"{where}s3."), f"{where}s3.object."
    key = unquote_plus(_req(obj, "key", at))
    etag, version = _str(obj, "eTag", at), _str(obj, "versionId", at)
    seq = _str(obj, "sequencer", at)
    # Same object re-delivered -> same id; a re-upload has a new eTag/version and sequencer.
    delivery = f"{bucket}/{key}@{version or etag or ''}#{seq or ''}"
    uri = f"s3://{bucket}/{key}"
    return ObjectEvent(delivery, bucket, key, etag, version, seq, uri, _int(obj, "size", at), name)


def _generic(payload: dict[str, Any]) -> ObjectEvent:
    uri, delivery = _req(payload, "uri"), _req(payload, "delivery_id")
    fmt = _str(payload, "format")
    if fmt is not None and fmt not in ("csv", "parquet"):
        raise WebhookError("field 'format' must be 'csv' or 'parquet'", 422)
    parts = urlsplit(uri)
    bucket = parts.netloc if parts.scheme == "s3" and parts.netloc else None
    key = parts.path.lstrip("/") if parts.scheme else uri
    etag, size, name = _str(payload, "etag"), _int(payload, "size"), _str(payload, "event_name")
    return ObjectEvent(delivery, bucket, key, etag, None, None, uri, size, name, fmt)


def parse_object_events(body: bytes) -> list[ObjectEvent]:
    """S3 / MinIO notifications (created objects only) or Flywheel's generic {uri, delivery_id}.

    MinIO's extra top-level "EventName"/"Key" summarise the Records and are ignored.
    """
    payload = _load_object(body)
    if payload.get("Event") == "s3:TestEvent":
        return []
    if "Records" in payload:
        records = payload["Records"]
        if not isinstance(records, list):
            raise WebhookError("field 'Records' must be a list", 400)
        return [e for i, r in enumerate(records) if (e := _record(r, i)) is not None]
    if "uri" in payload or "delivery_id" in payload:
        return [_generic(payload)]
    raise WebhookError("expected 'Records' (S3/MinIO) or 'uri' and 'delivery_id' (generic)", 400)
