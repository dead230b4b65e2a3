import hashlib
import hmac
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from app.sources.webhooks import (
    GitPush,
    WebhookError,
    branch_matches,
    parse_github,
    parse_gitlab,
    parse_object_events,
    verify_bearer,
    verify_generic,
    verify_github,
    verify_gitlab,
)

SECRET = "s3cr3t-value"
SHA_A = "a" * 40
SHA_B = "b" * 40
REPO = "https://github.com/acme/models.git"


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def body_of(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def gh_headers(event: str, delivery: str = "d-1") -> dict[str, str]:
    # Mixed case on purpose: header lookup must not depend on it.
    return {"x-github-event": event, "X-GITHUB-DELIVERY": delivery}


def gh_push(ref: str = "refs/heads/main", after: str = SHA_A, **extra: Any) -> bytes:
    payload = {
        "ref": ref,
        "before": SHA_B,
        "after": after,
        "deleted": False,
        "repository": {"clone_url": REPO},
        "pusher": {"name": "ada"},
        "sender": {"login": "ada-gh"},
    }
    return body_of(payload | extra)


def gh_pr(action: str, merged: bool, merge_sha: str | None = SHA_B) -> bytes:
    return body_of(
        {
            "action": action,
            "pull_request": {
                "merged": merged,
                "merge_commit_sha": merge_sha,
                "base": {"ref": "main"},
                "head": {"ref": "feature"},
                "merged_by": {"login": "grace"} if merged else None,
            },
            "repository": {"clone_url": REPO},
            "sender": {"login": "linus"},
        }
    )


@contextmanager
def expect(status: int, match: str | None = None) -> Iterator[None]:
    with pytest.raises(WebhookError, match=match) as info:
        yield
    assert info.value.status == status, info.value


# --- signatures -----------------------------------------------------------------------------


def test_github_signature_accepts_the_real_hmac() -> None:
    body = gh_push()
    verify_github(body, sign(body), SECRET)
    verify_github(body, sign(body).upper().replace("SHA256=", "sha256="), SECRET)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "sha1=" + "0" * 40,
        "sha256=nothex",
        "sha256=" + "0" * 63,
        "sha256=" + "é" * 64,
        "sha256=" + "0" * 64,
    ],
)
def test_github_signature_refuses_missing_garbled_and_forged(header: str | None) -> None:
    with expect(401):
        verify_github(gh_push(), header, SECRET)


def test_github_signature_refuses_wrong_secret_and_tampered_body() -> None:
    body = gh_push()
    with expect(401, "does not match"):
        verify_github(body, sign(body, "other-secret"), SECRET)
    with expect(401, "does not match"):
        verify_github(body + b" ", sign(body), SECRET)


def test_empty_configured_secret_fails_closed() -> None:
    body = b"{}"
    with expect(401, "not configured"):
        verify_github(body, sign(body, ""), "")
    with expect(401, "not configured"):
        verify_gitlab("", "")
    with expect(401, "not configured"):
        verify_bearer("Bearer ", "")


def test_gitlab_token() -> None:
    verify_gitlab(SECRET, SECRET)
    for wrong in (None, "", "s3cr3t", SECRET + "x", "ünïcode"):
        with expect(401):
            verify_gitlab(wrong, SECRET)


def test_bearer_token() -> None:
    verify_bearer(f"Bearer {SECRET}", SECRET)
    verify_bearer(f"bearer  {SECRET} ", SECRET)
    for wrong in (None, "", SECRET, f"Basic {SECRET}", "Bearer nope", "Bearer"):
        with expect(401):
            verify_bearer(wrong, SECRET)


def generic_sig(ts: int, body: bytes, secret: str = SECRET) -> str:
    return sign(f"{ts}.".encode() + body, secret)


def test_generic_signature_with_timestamp() -> None:
    body = body_of({"uri": "s3://b/k.csv", "delivery_id": "x"})
    now = 1_700_000_000.0
    ts = int(now)
    verify_generic(body, generic_sig(ts, body), str(ts), SECRET, now=now)
    verify_generic(body, generic_sig(ts - 299, body), str(ts - 299), SECRET, now=now)
    verify_generic(body, generic_sig(ts + 5, body), str(ts + 5), SECRET, now=now)  # clock skew


@pytest.mark.parametrize(
    ("offset", "match"),
    [(-301, "from now"), (-86_400, "from now"), (301, "from now"), (86_400, "from now")],
)
def test_generic_signature_refuses_stale_and_future(offset: int, match: str) -> None:
    body = b'{"uri": "s3://b/k", "delivery_id": "x"}'
    now = 1_700_000_000.0
    ts = int(now) + offset
    with expect(401, match):
        verify_generic(body, generic_sig(ts, body), str(ts), SECRET, now=now)


def test_generic_signature_refuses_bad_headers_and_forgery() -> None:
    body = b'{"uri": "s3://b/k", "delivery_id": "x"}'
    now = 1_700_000_000.0
    ts = int(now)
    with expect(401, "Timestamp"):
        verify_generic(body, generic_sig(ts, body), None, SECRET, now=now)
    with expect(401, "Timestamp"):
        verify_generic(body, generic_sig(ts, body), "12.5", SECRET, now=now)
    with expect(401, "missing"):
        verify_generic(body, None, str(ts), SECRET, now=now)
    # Signature over the body alone (no timestamp prefix) must not pass.
    with expect(401, "does not match"):
        verify_generic(body, sign(body), str(ts), SECRET, now=now)
    # A valid signature for one timestamp does not validate another.
    with expect(401, "does not match"):
        verify_generic(body, generic_sig(ts, body), str(ts + 1), SECRET, now=now)
    with expect(401, "does not match"):
        verify_generic(body, generic_sig(ts, body, "wrong"), str(ts), SECRET, now=now)


# --- GitHub -----------------------------------------------------------------------------------


def test_github_push_to_branch_is_actionable() -> None:
    push = parse_github(gh_headers("push", "abc-123"), gh_push())
    assert push == GitPush(
        provider="github",
        delivery_id="abc-123",
        event="push",
        ref="refs/heads/main",
        branch="main",
        commit=SHA_A,
        repository=REPO,
        actionable=True,
        reason="push",
        pusher="ada",
    )


def test_github_nested_branch_name() -> None:
    push = parse_github(gh_headers("push"), gh_push(ref="refs/heads/release/1.2"))
    assert push.branch == "release/1.2"
    assert push.actionable


def test_github_merged_pull_request() -> None:
    pr = parse_github(gh_headers("pull_request"), gh_pr("closed", merged=True))
    assert pr.actionable
    assert pr.reason == "merged pull request"
    assert (pr.event, pr.ref, pr.branch, pr.commit) == (
        "pull_request",
        "refs/heads/main",
        "main",
        SHA_B,
    )
    assert pr.pusher == "grace"
    assert pr.repository == REPO


def test_github_closed_unmerged_and_other_pr_actions_are_not_actionable() -> None:
    closed = parse_github(gh_headers("pull_request"), gh_pr("closed", merged=False))
    assert not closed.actionable
    assert closed.reason == "pull request closed without merge"
    assert closed.commit is None
    opened = parse_github(gh_headers("pull_request"), gh_pr("opened", merged=False))
    assert not opened.actionable
    assert opened.reason == "pull request opened"


def test_github_merged_pr_without_merge_sha_is_unprocessable() -> None:
    with expect(422):
        parse_github(gh_headers("pull_request"), gh_pr("closed", merged=True, merge_sha=None))


def test_github_tag_push_is_not_actionable() -> None:
    push = parse_github(gh_headers("push"), gh_push(ref="refs/tags/v1.0"))
    assert not push.actionable
    assert push.reason == "tag push"
    assert push.branch is None


def test_github_branch_deletion_is_not_actionable() -> None:
    push = parse_github(gh_headers("push"), gh_push(after="0" * 40, deleted=True))
    assert not push.actionable
    assert push.reason == "branch deletion"
    assert push.commit is None
    # Zero 'after' alone (no 'deleted' flag) is also a deletion.
    push = parse_github(gh_headers("push"), gh_push(after="0" * 40, deleted=None))
    assert push.reason == "branch deletion"


def test_github_ping_and_unknown_events() -> None:
    ping = parse_github(gh_headers("ping"), body_of({"zen": "Keep it simple.", "hook_id": 1}))
    assert (ping.event, ping.actionable, ping.reason) == ("ping", False, "ping")
    other = parse_github(gh_headers("issues"), body_of({"action": "opened"}))
    assert not other.actionable
    assert "ignored" in other.reason


def test_github_missing_headers_are_bad_requests() -> None:
    with expect(400, "X-GitHub-Delivery"):
        parse_github({"X-GitHub-Event": "push"}, gh_push())
    with expect(400, "X-GitHub-Event"):
        parse_github({"X-GitHub-Delivery": "d"}, gh_push())
    with expect(400):
        parse_github({"X-GitHub-Event": "push", "X-GitHub-Delivery": "  "}, gh_push())


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"after": "' + SHA_A.encode() + b'"}', "'ref'"),
        (b'{"ref": "refs/heads/main"}', "'after'"),
        (b'{"ref": 5, "after": "x"}', "'ref' must be a string"),
    ],
)
def test_github_malformed_payloads(body: bytes, match: str) -> None:
    with expect(400, match):
        parse_github(gh_headers("push"), body)


def test_github_pr_missing_fields() -> None:
    with expect(400, "pull_request"):
        parse_github(gh_headers("pull_request"), body_of({"action": "closed"}))
    with expect(400, "pull_request.base"):
        body = body_of({"action": "closed", "pull_request": {"merged": True}})
        parse_github(gh_headers("pull_request"), body)


# --- GitLab -----------------------------------------------------------------------------------

GL_REPO = "https://gitlab.example.com/acme/models.git"


def gl_headers(event: str, **extra: str) -> dict[str, str]:
    return {"X-Gitlab-Event": event, "X-Gitlab-Token": SECRET} | extra


def test_gitlab_push_with_token() -> None:
    headers = gl_headers("Push Hook", **{"Idempotency-Key": "idem-1", "X-Gitlab-Event-UUID": "u"})
    verify_gitlab(headers["X-Gitlab-Token"], SECRET)
    body = body_of(
        {
            "object_kind": "push",
            "ref": "refs/heads/main",
            "before": SHA_B,
            "after": SHA_A,
            "checkout_sha": SHA_A,
            "user_username": "ada",
            "project": {"git_http_url": GL_REPO},
        }
    )
    push = parse_gitlab(headers, body)
    assert push == GitPush(
        "gitlab", "idem-1", "push", "refs/heads/main", "main", SHA_A, GL_REPO, True, "push", "ada"
    )


def test_gitlab_delivery_id_falls_back_to_event_uuid() -> None:
    body = body_of({"ref": "refs/heads/dev", "after": SHA_A})
    push = parse_gitlab(gl_headers("Push Hook", **{"x-gitlab-event-uuid": "uuid-9"}), body)
    assert push.delivery_id == "uuid-9"
    assert push.branch == "dev"
    with expect(400, "Idempotency-Key"):
        parse_gitlab(gl_headers("Push Hook"), body)
    with expect(400, "X-Gitlab-Event"):
        parse_gitlab({"Idempotency-Key": "k"}, body)


def test_gitlab_branch_deletion_and_tag_push() -> None:
    headers = gl_headers("Push Hook", **{"Idempotency-Key": "k"})
    deleted = parse_gitlab(headers, body_of({"ref": "refs/heads/old", "after": "0" * 40}))
    assert (deleted.actionable, deleted.reason, deleted.commit) == (False, "branch deletion", None)
    tag_headers = gl_headers("Tag Push Hook", **{"Idempotency-Key": "k"})
    tag = parse_gitlab(tag_headers, body_of({"ref": "refs/tags/v2", "after": SHA_A}))
    assert (tag.event, tag.actionable, tag.reason) == ("tag_push", False, "tag push")


def gl_mr(action: str, **attrs: Any) -> bytes:
    base = {"action": action, "state": "merged", "target_branch": "main", "source_branch": "f"}
    return body_of(
        {
            "object_kind": "merge_request",
            "user": {"username": "grace"},
            "project": {"git_http_url": GL_REPO},
            "object_attributes": base | attrs,
        }
    )


def test_gitlab_merge_request_merged() -> None:
    headers = gl_headers("Merge Request Hook", **{"Idempotency-Key": "mr-1"})
    mr = parse_gitlab(headers, gl_mr("merge", merge_commit_sha=SHA_B, last_commit={"id": SHA_A}))
    assert mr.actionable
    assert (mr.event, mr.reason, mr.branch, mr.commit) == (
        "merge_request",
        "merged merge request",
        "main",
        SHA_B,
    )
    assert mr.pusher == "grace"
    assert mr.repository == GL_REPO
    # Fast-forward merge: no merge commit, the last commit is the new head.
    ff = parse_gitlab(headers, gl_mr("merge", merge_commit_sha=None, last_commit={"id": SHA_A}))
    assert ff.commit == SHA_A


def test_gitlab_merge_request_not_merged_or_without_commit() -> None:
    headers = gl_headers("Merge Request Hook", **{"Idempotency-Key": "mr-2"})
    opened = parse_gitlab(headers, gl_mr("open", state="opened", last_commit={"id": SHA_A}))
    assert not opened.actionable
    assert opened.commit is None
    assert opened.reason == "merge request open"
    # A label change on an already merged MR must not retrigger.
    assert not parse_gitlab(headers, gl_mr("update", merge_commit_sha=SHA_B)).actionable
    with expect(422):
        parse_gitlab(headers, gl_mr("merge"))
    with expect(400, "object_attributes"):
        parse_gitlab(headers, body_of({"object_kind": "merge_request"}))


def test_gitlab_other_events_are_ignored() -> None:
    hook = parse_gitlab(gl_headers("Pipeline Hook", **{"Idempotency-Key": "p"}), b"{}")
    assert (hook.event, hook.actionable) == ("pipeline", False)


def test_gitlab_malformed_json() -> None:
    with expect(400, "not valid JSON"):
        parse_gitlab(gl_headers("Push Hook", **{"Idempotency-Key": "k"}), b'{"ref": ')


# --- branch globs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("branch", "pattern", "expected"),
    [
        ("main", "main", True),
        ("main", "Main", False),
        ("mainline", "main", False),
        ("release/1.2", "release/*", True),
        ("release", "release/*", False),
        ("hotfix/1", "release/*", False),
        ("anything/at/all", "*", True),
        ("feat-1", "feat-?", True),
        ("main", "", False),
    ],
)
def test_branch_matches(branch: str, pattern: str, expected: bool) -> None:
    assert branch_matches(branch, pattern) is expected


# --- object stores ------------------------------------------------------------------------


def s3_record(key: str, event: str = "ObjectCreated:Put", **obj: Any) -> dict[str, Any]:
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": event,
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": "training-data", "arn": "arn:aws:s3:::training-data"},
            "object": {"key": key, "size": 1024, "eTag": "0123abcd", "sequencer": "0A1B2C"} | obj,
        },
    }


def test_s3_event_with_url_encoded_unicode_key() -> None:
    body = body_of({"Records": [s3_record("data/new+file%C3%A9.csv", versionId="v7")]})
    [event] = parse_object_events(body)
    assert event.key == "data/new fileé.csv"
    assert event.bucket == "training-data"
    assert event.uri == "s3://training-data/data/new fileé.csv"
    assert event.size == 1024
    assert (event.etag, event.version_id, event.sequencer) == ("0123abcd", "v7", "0A1B2C")
    assert event.event_name == "ObjectCreated:Put"
    assert event.delivery_id == "training-data/data/new fileé.csv@v7#0A1B2C"


def test_s3_delivery_id_uses_etag_without_version_and_differs_per_upload() -> None:
    first = parse_object_events(body_of({"Records": [s3_record("a.csv")]}))[0]
    again = parse_object_events(body_of({"Records": [s3_record("a.csv")]}))[0]
    newer = parse_object_events(
        body_of({"Records": [s3_record("a.csv", eTag="ffff", sequencer="0A1B2D")]})
    )[0]
    assert first.delivery_id == again.delivery_id == "training-data/a.csv@0123abcd#0A1B2C"
    assert newer.delivery_id != first.delivery_id


def test_s3_keeps_only_created_objects() -> None:
    body = body_of(
        {
            "Records": [
                s3_record("gone.csv", "ObjectRemoved:Delete"),
                s3_record("new.csv", "ObjectCreated:CompleteMultipartUpload"),
            ]
        }
    )
    assert [e.key for e in parse_object_events(body)] == ["new.csv"]
    assert parse_object_events(body_of({"Records": []})) == []


def test_minio_bucket_notification() -> None:
    record = s3_record("incoming/day+1.parquet", "s3:ObjectCreated:Put", versionId=None)
    record["eventSource"] = "minio:s3"
    body = body_of(
        {
            "EventName": "s3:ObjectCreated:Put",
            "Key": "training-data/incoming/day 1.parquet",
            "Records": [record],
        }
    )
    [event] = parse_object_events(body)
    assert event.event_name == "s3:ObjectCreated:Put"
    assert event.key == "incoming/day 1.parquet"
    assert event.uri == "s3://training-data/incoming/day 1.parquet"
    assert event.version_id is None
    removed = dict(record, eventName="s3:ObjectRemoved:Delete")
    removal = {"EventName": "s3:ObjectRemoved:Delete", "Key": "k", "Records": [removed]}
    assert parse_object_events(body_of(removal)) == []


def test_s3_test_event_is_empty() -> None:
    body = body_of(
        {
            "Service": "Amazon S3",
            "Event": "s3:TestEvent",
            "Time": "2024-01-01T00:00:00.000Z",
            "Bucket": "training-data",
            "RequestId": "r",
            "HostId": "h",
        }
    )
    assert parse_object_events(body) == []


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ({"Records": "nope"}, "'Records' must be a list"),
        ({"Records": [5]}, "Records\\[0\\]"),
        ({"Records": [{"s3": {}}]}, "Records\\[0\\].eventName"),
        ({"Records": [{"eventName": "ObjectCreated:Put"}]}, "Records\\[0\\].s3"),
        (
            {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"object": {"key": "k"}}}]},
            "Records\\[0\\].s3.bucket",
        ),
        (
            {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}}}]},
            "Records\\[0\\].s3.object",
        ),
        (
            {
                "Records": [
                    s3_record("ok"),
                    {
                        "eventName": "ObjectCreated:Put",
                        "s3": {"bucket": {"name": "b"}, "object": {}},
                    },
                ]
            },
            "Records\\[1\\].s3.object.key",
        ),
        ({"Records": [s3_record("k", size="big")]}, "size' must be an integer"),
        ({"hello": "world"}, "expected 'Records'"),
        ({"uri": "s3://b/k.csv"}, "'delivery_id'"),
        ({"delivery_id": "d"}, "'uri'"),
    ],
)
def test_object_events_malformed(payload: dict[str, Any], match: str) -> None:
    with expect(400, match):
        parse_object_events(body_of(payload))


def test_object_events_invalid_json() -> None:
    with expect(400, "not valid JSON"):
        parse_object_events(b"Records")


def test_generic_object_event() -> None:
    body = body_of(
        {
            "uri": "s3://lake/daily/2024-01-01.parquet",
            "delivery_id": "run-42",
            "format": "parquet",
            "size": 10,
        }
    )
    [event] = parse_object_events(body)
    assert event.delivery_id == "run-42"
    assert (event.bucket, event.key) == ("lake", "daily/2024-01-01.parquet")
    assert event.uri == "s3://lake/daily/2024-01-01.parquet"
    assert (event.format, event.size) == ("parquet", 10)
    other = parse_object_events(body_of({"uri": "https://host/x/y.csv", "delivery_id": "d2"}))[0]
    assert (other.bucket, other.key, other.format) == (None, "x/y.csv", None)
    with expect(422, "format"):
        parse_object_events(body_of({"uri": "s3://b/k", "delivery_id": "d", "format": "xlsx"}))


def test_signed_generic_end_to_end() -> None:
    body = body_of({"uri": "s3://lake/f.csv", "delivery_id": "gen-1", "format": "csv"})
    now = 1_800_000_000.0
    ts = str(int(now))
    verify_generic(body, generic_sig(int(now), body), ts, SECRET, now=now)
    assert parse_object_events(body)[0].delivery_id == "gen-1"
