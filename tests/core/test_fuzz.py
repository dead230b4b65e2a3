"""Schemathesis over the whole OpenAPI document, on Postgres, through a real HTTP server.

Every operation is fuzzed with an admin token (the role that reaches furthest), with values
drawn from its schema and from the boundaries schemathesis knows (huge integers, NUL bytes,
empty and over-long strings). No answer may be a 5xx, and every status and content type an
operation answers must be in the document, so generated SDKs know every error they can get.
The budget (examples per operation) is bounded so that the suite stays within CI's time.
"""

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    status_code_conformance,
)
from sqlalchemy.orm import Session, sessionmaker

from app.auth import service as auth_service
from app.core.security import Role
from tests.live import live_server
from tests.registry.helpers import Registry, churn_frame
from tests.training.conftest import retrain_spec

NEGATIVE = GenerationMode.NEGATIVE
EXAMPLES_PER_OPERATION = int(os.environ.get("FLYWHEEL_FUZZ_EXAMPLES", "15"))


@pytest.fixture
def world(api: TestClient, versions: None, tmp_path: Path) -> dict[str, Any]:
    """One of each thing the paths name, all called `churn` where a name is asked for, so
    that fuzzed bodies and queries reach real resources and not only 404s."""

    def created(path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = api.post(path, json=body)
        assert answer.status_code == 201, (path, answer.text)
        return dict(answer.json())

    Registry(api, tmp_path).dataset_version(churn_frame(), name="churn")
    created(
        "/api/v1/deployments", {"name": "churn", "variants": [{"name": "v1", "model": "churn/1"}]}
    )
    created("/api/v1/pipelines", {"name": "churn", "spec": retrain_spec()})
    experiment = created("/api/v1/experiments", {"name": "churn"})
    run = created("/api/v1/runs", {"experiment_id": experiment["id"]})
    policy = created(
        "/api/v1/policies", {"name": "churn", "deployment": "churn", "pipeline": "churn"}
    )
    rule = created(
        "/api/v1/alert-rules",
        {
            "name": "churn",
            "deployment": "churn",
            "metric": "error_rate",
            "operator": ">",
            "threshold": 0.05,
            "window": "5m",
        },
    )
    subscription = created(
        "/api/v1/subscriptions", {"url": "https://93.184.215.14/hook", "event_types": ["*"]}
    )
    return {
        "name": "churn",
        "version": 1,
        "alias": "champion",
        "experiment_id": experiment["id"],
        "run_id": run["id"],
        "policy_id": policy["id"],
        "rule_id": rule["id"],
        "subscription_id": subscription["id"],
    }


@pytest.fixture
def served_schema(app: FastAPI, world: dict[str, Any], requires_postgres: None) -> Iterator[Any]:
    with live_server(app) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance]


def test_no_operation_answers_a_5xx_or_an_undocumented_status(
    served_schema: Any, world: dict[str, Any], session_factory: sessionmaker[Session]
) -> None:
    failures: dict[str, str] = {}
    reached: set[str] = set()  # operations that answered a success at least once
    operations = [result.ok() for result in served_schema.get_all_operations()]
    assert len(operations) > 100  # the whole document, not a corner of it

    def admin_headers() -> dict[str, str]:
        # a fresh token per case: a fuzzed DELETE /tokens/{id} may revoke an earlier one
        with session_factory() as session:
            _, secret = auth_service.create_token(session, name="fuzz", role=Role.admin)
            session.commit()
        return {"Authorization": f"Bearer {secret}"}

    for operation in operations:
        names = {p.name for p in operation.path_parameters}
        known = {name: value for name, value in world.items() if name in names}
        strategies = [operation.as_strategy(), operation.as_strategy(NEGATIVE)]
        if known:  # the same operation on things that exist
            strategies.append(operation.as_strategy(path_parameters=known))

        @given(case=st.one_of(strategies))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,  # the same cases on every run: a failure here is reproducible
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
            database=None,
        )
        def fuzz(case: Any) -> None:
            response = case.call_and_validate(headers=admin_headers(), checks=CHECKS, timeout=60)
            if response.status_code < 300:
                reached.add(case.operation.label)

        try:
            fuzz()
        except Exception as exc:
            failures[operation.label] = str(exc)[:2000]
    assert len(reached) >= len(operations) // 3, sorted(reached)  # past validation, into the code
    report = "\n\n".join(f"{label}:\n{message}" for label, message in failures.items())
    assert not failures, f"{len(failures)} operations failed:\n{report}"


def test_explicit_nulls_in_every_update_are_a_4xx_or_accepted_never_a_5xx(
    api: TestClient, world: dict[str, Any]
) -> None:
    """`PATCH /alert-rules/{id}` with `{"threshold": null}` was a 500: every field of every
    update body, sent as an explicit null on a thing that exists."""
    document = api.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    answers: dict[str, int] = {}
    for path, item in document["paths"].items():
        operation = item.get("patch")
        if operation is None:
            continue
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        fields = schemas[ref.rsplit("/", 1)[1]]["properties"]
        concrete = re.sub(r"\{([^}]+)\}", lambda m: str(world[m.group(1)]), path)
        for field in fields:
            answer = api.patch(concrete, json={field: None})
            answers[f"PATCH {path} {field}=null"] = answer.status_code
            assert answer.status_code < 500, (path, field, answer.text)
            if answer.status_code >= 400:
                assert answer.json()["error"]["message"], answer.text
    assert len(answers) > 20  # every update's fields, not a corner of them
