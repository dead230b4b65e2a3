"""Where outbound webhooks may go: private, loopback, link-local and metadata addresses are
refused at registration and update as at delivery; delivery connects only to the addresses it
checked (DNS rebinding cannot reach inside); a name that does not resolve is retried."""

import dataclasses
import socket
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.subscriptions import webhooks
from tests.conftest import InlineJobs
from tests.live import live_server
from tests.subscriptions.receiver import Receiver
from tests.subscriptions.test_webhooks_out import deliveries, move_alias, subscribe

PUBLIC = "93.184.216.34"  # a public address; its connections are refused in these tests
Configure = Callable[..., Settings]


@pytest.fixture
def configure(app: FastAPI, jobs: InlineJobs, settings: Settings) -> Configure:
    """The same settings for the API (registration) and the jobs (delivery)."""

    def apply(**changes: Any) -> Settings:
        changed = settings.model_copy(update={"webhook_backoff_seconds": 0.05, **changes})
        app.state.settings = changed
        jobs.ctx = dataclasses.replace(jobs.ctx, settings=changed)
        return changed

    return apply


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    target = Receiver()
    with live_server(target.app) as base:
        yield target, int(base.rsplit(":", 1)[1])


class FakeDns:
    """Answers for `*.test` names as a test says; every other name resolves for real."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = socket.getaddrinfo
        self.answers: dict[str, list[str | None]] = {}  # None: "does not resolve"
        self.asked: list[str] = []
        monkeypatch.setattr(socket, "getaddrinfo", self.getaddrinfo)

    def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if not (isinstance(host, str) and host.endswith(".test")):
            return self.real(host, port, *args, **kwargs)
        self.asked.append(host)
        queue = self.answers[host]
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (answer, port))]


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    return FakeDns(monkeypatch)


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every TCP connect the process makes; the public test address never answers."""
    made: list[tuple[str, int]] = []
    real = socket.create_connection

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        made.append((address[0], address[1]))
        if address[0] == PUBLIC:
            raise ConnectionRefusedError(f"{PUBLIC} is not reachable from the tests")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    return made


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1/hook", "loopback"),
        ("http://127.9.9.9:8080/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://2130706433/hook", "loopback"),  # 127.0.0.1 written as one number
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://[2002:7f00:1::]/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://[::ffff:169.254.169.254]/", "cloud metadata"),
        ("http://169.254.10.1/hook", "link-local"),
        ("http://[fe80::1]/hook", "link-local"),
        ("https://10.1.2.3/hook", "private"),
        ("https://172.16.0.9/hook", "private"),
        ("https://192.168.1.1/hook", "private"),
        ("https://[fd00::1]/hook", "private"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("http://[::]/hook", "unspecified"),
        ("http://100.64.0.1/hook", "shared (carrier-grade NAT)"),
        ("http://224.0.0.1/hook", "multicast"),
    ],
)
def test_registration_refuses_each_kind_of_inside_address(
    api: TestClient, url: str, kind: str
) -> None:
    answer = api.post("/api/v1/subscriptions", json={"url": url, "event_types": ["*"]})
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "destination_refused"
    assert f"a {kind} address" in error["message"]
    assert "FLYWHEEL_WEBHOOK_ALLOWED_HOSTS" in error["message"]
    assert error["details"]["address_kind"] == kind
    assert api.get("/api/v1/subscriptions").json()["items"] == []


def test_a_public_name_resolving_inside_is_refused_and_so_is_an_update_to_it(
    api: TestClient, dns: FakeDns
) -> None:
    dns.answers = {"inside.test": ["10.0.0.5"], "outside.test": [PUBLIC]}
    created = subscribe(api, "https://outside.test/hook", ["*"])
    refused = api.post(
        "/api/v1/subscriptions", json={"url": "https://inside.test/h", "event_types": ["*"]}
    )
    assert refused.status_code == 422
    assert "inside.test resolves to 10.0.0.5, which is a private address" in refused.text
    moved = api.patch(
        f"/api/v1/subscriptions/{created['id']}", json={"url": "http://169.254.169.254/x"}
    )
    assert moved.status_code == 422 and "cloud metadata" in moved.text
    assert api.get(f"/api/v1/subscriptions/{created['id']}").json()["url"] == (
        "https://outside.test/hook"
    )


def test_the_allowlist_is_exact(api: TestClient, configure: Configure) -> None:
    configure(webhook_allowed_hosts=["127.0.0.1", "10.1.0.0/16"])
    for url in ("http://127.0.0.1:9/hook", "http://10.1.200.3/hook"):
        assert api.post("/api/v1/subscriptions", json={"url": url, "event_types": ["*"]}).is_success
    for url in ("http://127.0.0.2/hook", "http://10.2.0.1/hook", "http://[::ffff:127.0.0.1]/"):
        answer = api.post("/api/v1/subscriptions", json={"url": url, "event_types": ["*"]})
        assert answer.status_code == 422, url


def test_dns_rebinding_cannot_make_a_delivery_reach_inside(
    api: TestClient,
    versions: None,
    jobs: InlineJobs,
    configure: Configure,
    dns: FakeDns,
    connections: list[tuple[str, int]],
    receiver: tuple[Receiver, int],
) -> None:
    """The name answers a public address when checked and 127.0.0.1 (where a receiver
    listens) on every later lookup: the delivery must go to the public address or nowhere."""
    configure(webhook_max_attempts=1)
    target, port = receiver
    dns.answers = {"rebind.test": [PUBLIC]}
    subscription = subscribe(api, f"http://rebind.test:{port}/hook", ["model.alias_moved"])
    dns.answers = {"rebind.test": [PUBLIC, "127.0.0.1"]}  # public once, then inside
    connections.clear()
    move_alias(api)
    jobs.run()
    assert target.received == []
    assert connections == [(PUBLIC, port)]
    [logged] = deliveries(api, subscription)
    assert logged["status"] == "failed" and "ConnectError" in logged["attempts"][0]["error"]


def test_a_pinned_delivery_still_names_the_host(
    api: TestClient,
    versions: None,
    jobs: InlineJobs,
    configure: Configure,
    dns: FakeDns,
    connections: list[tuple[str, int]],
    receiver: tuple[Receiver, int],
) -> None:
    configure(webhook_allowed_hosts=["receiver.test"])
    target, port = receiver
    dns.answers = {"receiver.test": ["127.0.0.1"]}
    subscription = subscribe(api, f"http://receiver.test:{port}/hook", ["model.alias_moved"])
    connections.clear()
    move_alias(api)
    jobs.run()
    [got] = target.received
    assert got["headers"]["host"] == f"receiver.test:{port}"
    assert connections == [("127.0.0.1", port)]
    assert deliveries(api, subscription)[0]["status"] == "delivered"


def test_https_is_pinned_with_the_host_kept_for_sni_and_certificate_checks() -> None:
    destination = webhooks.Destination("https://hooks.example.com/in?x=1", "hooks.example.com", [])
    with httpx.Client() as client:
        request = webhooks.pinned_request(client, destination, "2606:4700::1111", b"{}", {})
    assert request.url.host == "2606:4700::1111" and request.url.path == "/in"
    assert request.headers["host"] == "hooks.example.com"
    assert request.extensions["sni_hostname"] == "hooks.example.com"


def test_a_host_that_does_not_resolve_is_retried_like_any_failure(
    api: TestClient,
    versions: None,
    jobs: InlineJobs,
    configure: Configure,
    dns: FakeDns,
    receiver: tuple[Receiver, int],
) -> None:
    configure(webhook_allowed_hosts=["127.0.0.0/8"], webhook_max_attempts=3)
    target, port = receiver
    # not there at registration (accepted: delivery checks again) nor for two attempts
    dns.answers = {"late.test": [None, None, None, "127.0.0.1"]}
    subscription = subscribe(api, f"http://late.test:{port}/hook", ["model.alias_moved"])
    move_alias(api)
    jobs.run()
    [logged] = deliveries(api, subscription)
    errors = [a["error"] for a in logged["attempts"]]
    assert len(errors) == 3 and all("does not resolve" in e for e in errors[:2])
    assert logged["status"] == "delivered" and len(target.received) == 1


def test_a_host_that_never_resolves_gives_up_after_the_attempt_budget(
    api: TestClient, versions: None, jobs: InlineJobs, configure: Configure, dns: FakeDns
) -> None:
    configure(webhook_max_attempts=3)
    dns.answers = {"gone.test": [None]}
    subscription = subscribe(api, "https://gone.test/hook", ["model.alias_moved"])
    move_alias(api)
    jobs.run()
    [logged] = deliveries(api, subscription)
    assert logged["status"] == "failed" and len(logged["attempts"]) == 3
    assert "gone.test does not resolve" in logged["attempts"][-1]["error"]
