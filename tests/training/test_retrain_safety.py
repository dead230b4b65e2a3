"""A retrain must not change what callers send without anyone deciding it: columns a train
task leaves out, a policy's time column left out by default, column types kept through
logged traffic, a breaking challenger held back from production with the reason shown and
sent as an event, and a trigger that keeps firing during a retrain reported once."""

import io
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.events.models import Event
from app.events.types import EventType, subscribable_patterns
from tests.conftest import InlineJobs
from tests.deployments.traffic import record
from tests.registry.helpers import Registry
from tests.training.conftest import (
    Labelled,
    evaluations,
    frame,
    retrain_spec,
    serve_v1_with_retrain_pipeline,
    tick,
)

URL = "/api/v1/policies"
START = pd.Timestamp("2026-11-01", tz="UTC")


def create(api: TestClient, deployment: str = "churn", **body: Any) -> dict[str, Any]:
    reply = api.post(
        URL, json={"name": "nightly", "deployment": deployment, "pipeline": "retrain", **body}
    )
    assert reply.status_code == 201, reply.text
    return dict(reply.json())


def events(session_factory: sessionmaker[Session], kind: str) -> list[Event]:
    with session_factory() as session:
        return list(session.scalars(select(Event).where(Event.type == kind).order_by(Event.id)))


def retrain_once(api: TestClient, jobs: InlineJobs, policy: dict[str, Any]) -> dict[str, Any]:
    """Trigger by hand, run the pipeline, let beat follow it up; the fired evaluation."""
    fired = api.post(f"{URL}/{policy['id']}/trigger", json={})
    assert fired.status_code == 202, fired.text
    jobs.run()
    tick(jobs)
    tick(jobs)
    [done] = [e for e in evaluations(api, policy["id"]) if e["outcome"] == "fired"]
    return done


def set_train_params(api: TestClient, **params: Any) -> None:
    spec = retrain_spec()
    spec["tasks"][0]["params"].update(params)
    reply = api.patch("/api/v1/pipelines/retrain", json={"spec": spec})
    assert reply.status_code == 200, reply.text


# -- a served model whose training data had a timestamp column ---------------------------------


def stamped_frame(rows: int, seed: int) -> pd.DataFrame:
    rows_frame = frame(rows, seed=seed)
    rows_frame.insert(0, "ts", pd.date_range(START, periods=rows, freq="h"))
    return rows_frame


def fit_ignoring_ts(rows: pd.DataFrame) -> Pipeline:
    """Fitted on a table with `ts` that it drops, as the auto preprocessing does: `ts` is
    still a required input (the column transformer checks it is there)."""
    prep = ColumnTransformer(
        [
            ("num", StandardScaler(), ["age", "income"]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["city"]),
        ],
        remainder="drop",
    )
    model = Pipeline([("prep", prep), ("clf", LogisticRegression(max_iter=500))])
    return model.fit(rows.drop(columns=["churned"]), rows["churned"])


@pytest.fixture
def stamped(api: TestClient, jobs: InlineJobs, tmp_path: Path) -> TestClient:
    """`churn` v1, trained on rows with a datetime `ts`, serving deployment `churn`."""
    training = stamped_frame(300, seed=7)
    registry = Registry(api, tmp_path)
    api.post("/api/v1/datasets", json={"name": "stamped"})
    buffer = io.BytesIO()
    training.to_parquet(buffer, index=False)
    uploaded = api.post(
        "/api/v1/datasets/stamped/versions", files={"file": ("d.parquet", buffer.getvalue())}
    )
    assert uploaded.status_code in (200, 201), uploaded.text
    registry.register("churn", fit_ignoring_ts(training), uploaded.json()["id"])
    jobs.run()
    v1 = api.get("/api/v1/models/churn/versions/1").json()
    assert v1["status"] == "ready", v1
    assert {"name": "ts", "type": "datetime", "nullable": False} in v1["signature"]["inputs"]
    api.put("/api/v1/models/churn/aliases/champion", json={"version": 1})
    return serve_v1_with_retrain_pipeline(api)


def send_stamped(
    api: TestClient, session_factory: sessionmaker[Session], rows: pd.DataFrame
) -> None:
    """Traffic as clients send it (the timestamp as ISO text), labelled the other way round:
    the served model is wrong now, so a retrain is blessed."""
    logged = [
        {
            "ts": row.ts.isoformat(),
            "age": int(row.age),
            "income": float(row.income),
            "city": row.city,
        }
        for row in rows.itertuples()
    ]
    truth = rows["churned"].astype(int).tolist()
    ids = record(session_factory, "churn", "v1", len(rows), rows=logged, predictions=truth)
    items = [{"request_id": i, "label": 1 - y} for i, y in zip(ids, truth, strict=True)]
    reply = api.post("/api/v1/deployments/churn/feedback", json={"items": items})
    assert reply.status_code == 200, reply.text


def test_a_logged_timestamp_stays_a_datetime_and_the_retrained_signature_is_unchanged(
    stamped: TestClient, jobs: InlineJobs, session_factory: sessionmaker[Session]
) -> None:
    send_stamped(stamped, session_factory, stamped_frame(300, seed=11))
    policy = create(stamped, window={"kind": "last_n", "n": 250})
    done = retrain_once(stamped, jobs, policy)
    kept = stamped.get("/api/v1/datasets/nightly-window/versions/1").json()
    types = {c["name"]: c["type"] for c in kept["schema"]}
    assert types == {
        "ts": "datetime",
        "age": "integer",
        "income": "float",
        "city": "string",
        "churned": "integer",
    }
    challenger = stamped.get("/api/v1/models/churn/versions/2").json()
    assert (
        challenger["signature"]["inputs"]
        == stamped.get("/api/v1/models/churn/versions/1").json()["signature"]["inputs"]
    )
    assert challenger["compatibility"]["verdict"] == "identical", challenger["compatibility"]
    assert done["retrain_status"] == "promoted", done
    assert done["retrain_detail"]["signature"]["verdict"] == "identical"


def test_a_policy_leaves_its_time_column_out_unless_the_train_task_says_otherwise(
    served: TestClient, jobs: InlineJobs, tmp_path: Path
) -> None:
    rows = frame(400, seed=31)
    rows["ts"] = pd.date_range(START, periods=400, freq="h").astype(str)
    Registry(served, tmp_path).dataset_version(rows, name="landing")
    policy = create(
        served,
        data={"source": "dataset", "dataset": "landing", "time_column": "ts"},
        window={"kind": "last_n", "n": 300},
    )
    done = retrain_once(served, jobs, policy)
    # the rows are kept as the dataset has them, time column included...
    kept = served.get("/api/v1/datasets/nightly-window/versions/1").json()
    assert {c["name"] for c in kept["schema"]} == {"age", "income", "city", "churned", "ts"}
    # ...and the model neither learns from it nor asks for it
    run = served.get(f"/api/v1/pipeline-runs/{done['pipeline_run_id']}").json()
    assert run["params"]["exclude_columns"] == ["ts"]
    challenger = served.get("/api/v1/models/churn/versions/3").json()
    assert [c["name"] for c in challenger["signature"]["inputs"]] == ["age", "income", "city"]
    assert done["retrain_status"] == "promoted", done
    # a train task that names its own exclusions (none here) is left alone
    set_train_params(served, exclude_columns=[])
    served.patch(f"{URL}/{policy['id']}", json={"promote": False, "cooldown": "1s"})
    again = served.post(f"{URL}/{policy['id']}/trigger", json={"force": True}).json()
    run = served.get(f"/api/v1/pipeline-runs/{again['pipeline_run_id']}").json()
    assert "exclude_columns" not in run["params"]


def test_a_train_task_can_leave_columns_out_and_names_the_unknown_ones(
    served: TestClient, labelled: Labelled, jobs: InlineJobs
) -> None:
    bad = retrain_spec()
    bad["tasks"][0]["params"]["exclude_columns"] = ["churned"]
    refused = served.post("/api/v1/pipelines", json={"name": "bad", "spec": bad})
    assert refused.status_code == 422 and "names the target 'churned'" in refused.text
    set_train_params(served, exclude_columns=["postcode"])
    labelled(frame(200, seed=11), flip=True)
    policy = create(served)
    done = retrain_once(served, jobs, policy)
    assert done["retrain_status"] == "failed"
    assert "exclude_columns: 'postcode' not in the dataset" in done["retrain_detail"]["error"]
    assert "'age'" in done["retrain_detail"]["error"]  # the columns it has are listed


def test_a_breaking_challenger_is_registered_not_promoted_and_the_policy_says_why(
    served: TestClient,
    labelled: Labelled,
    jobs: InlineJobs,
    session_factory: sessionmaker[Session],
) -> None:
    set_train_params(served, exclude_columns=["city"])  # callers send city: breaking
    labelled(frame(300, seed=11), flip=True)
    policy = create(served, window={"kind": "last_n", "n": 200})
    done = retrain_once(served, jobs, policy)
    assert done["retrain_status"] == "registered", done
    error = done["retrain_detail"]["promote_error"]
    assert "breaking" in error and "city removed" in error and "v1" in error
    assert done["retrain_detail"]["signature"]["verdict"] == "breaking"
    live = served.get("/api/v1/deployments/churn").json()["variants"]
    assert [v["model"] for v in live] == ["churn/1"]
    assert served.get("/api/v1/models/churn/versions/champion").json()["version"] == 1
    [sent] = events(session_factory, "retrain.promote_failed")
    assert sent.payload["policy"] == "nightly" and sent.payload["reason"] == error
    assert sent.payload["challenger_version"] == 3
    shown = served.get(f"{URL}/{policy['id']}").json()
    assert shown["last_promote_failure"]["reason"] == error
    assert shown["last_promote_failure"]["challenger_version"] == 3
    assert shown["last_retrain"]["status"] == "registered"
    assert shown["last_retrain"]["reason"] == error


def test_a_promotion_that_fails_for_any_reason_is_an_event_and_shown_on_the_policy(
    served: TestClient,
    labelled: Labelled,
    jobs: InlineJobs,
    session_factory: sessionmaker[Session],
) -> None:
    assert EventType.retrain_promote_failed in subscribable_patterns()  # so it can be subscribed to
    labelled(frame(300, seed=11), flip=True)
    policy = create(served, window={"kind": "last_n", "n": 200})
    assert served.get(f"{URL}/{policy['id']}").json()["last_retrain"] is None
    fired = served.post(f"{URL}/{policy['id']}/trigger", json={}).json()
    jobs.run()
    # meanwhile someone starts an A/B test: there is no single live variant to replace
    split = served.patch(
        "/api/v1/deployments/churn",
        json={
            "variants": [
                {"name": "v1", "model": "churn/1", "weight": 60},
                {"name": "v2", "model": "churn/2", "weight": 40},
            ]
        },
    )
    assert split.status_code == 200, split.text
    tick(jobs)
    [done] = [e for e in evaluations(served, policy["id"]) if e["id"] == fired["id"]]
    assert done["retrain_status"] == "registered", done
    assert "A/B test" in done["retrain_detail"]["promote_error"]
    [sent] = events(session_factory, "retrain.promote_failed")
    assert "A/B test" in sent.payload["reason"] and sent.payload["deployment"] == "churn"
    shown = served.get(f"{URL}/{policy['id']}").json()
    assert "A/B test" in shown["last_promote_failure"]["reason"]
    assert shown["last_retrain"]["evaluation_id"] == fired["id"]


def test_a_trigger_that_keeps_firing_during_a_retrain_is_reported_once(
    served: TestClient,
    labelled: Labelled,
    jobs: InlineJobs,
    session_factory: sessionmaker[Session],
) -> None:
    labelled(frame(200, seed=11), flip=True)
    policy = create(
        served,
        triggers={"performance": {"metric": "accuracy", "below": 0.7, "min_samples": 100}},
        cooldown="1h",
    )
    tick(jobs)
    assert evaluations(served, policy["id"])[-1]["outcome"] == "fired"
    labelled(frame(200, seed=12), flip=True)  # still wrong while the retrain runs
    for _ in range(4):
        tick(jobs)
    coalesced = [e for e in evaluations(served, policy["id"]) if e["outcome"] == "coalesced"]
    assert len(coalesced) == 4  # every check is kept...
    assert all("in progress" in e["reason"] for e in coalesced)
    [sent] = events(session_factory, "policy.coalesced")  # ...and reported once
    assert sent.payload["evaluation"] == coalesced[0]["id"]
    assert f"already reported with evaluation #{coalesced[0]['id']}" in coalesced[-1]["reason"]
