"""Validation errors locate the problem in what was sent: no union member or validator names
(`function-after[...]`, `FeedbackBatch`, `int`, `[key]`) in `loc`, `field` or the message."""

from typing import Annotated, Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, StringConstraints, model_validator

from app.core.errors import install_error_handlers


class Point(BaseModel):
    x: int

    @model_validator(mode="after")
    def _positive(self) -> "Point":
        if self.x < 0:
            raise ValueError("x must not be negative")
        return self


class Line(BaseModel):
    points: list[Point]


class Tagged(BaseModel):
    tags: dict[Annotated[str, StringConstraints(max_length=3)], int] = {}
    value: int | bool | None = None


@pytest.fixture
def plain() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/shapes")
    def shapes(body: Point | Line) -> dict[str, str]:
        return {}

    @app.post("/tagged")
    def tagged(body: Tagged, offset: int = 0) -> dict[str, str]:
        return {}

    return TestClient(app)


def fields(answer: Any) -> list[str]:
    assert answer.status_code == 422, answer.text
    return [d["field"] for d in answer.json()["error"]["details"]]


def test_union_members_are_not_places(plain: TestClient) -> None:
    answer = plain.post("/shapes", json={"points": [{"x": 1}, {}]})
    assert fields(answer) == ["body.x", "body.points[1].x"]
    assert [d["loc"] for d in answer.json()["error"]["details"]] == [
        ["body", "x"],
        ["body", "points", 1, "x"],
    ]
    assert answer.json()["error"]["message"] == "body.x: Field required (and 1 more)"
    assert fields(plain.post("/shapes", json={"x": -1})) == ["body", "body.points"]


def test_dict_keys_scalar_unions_query_and_broken_json(plain: TestClient) -> None:
    assert fields(plain.post("/tagged", json={"tags": {"toolong": 1}})) == ["body.tags.toolong"]
    scalar = plain.post("/tagged", json={"value": [1]})
    assert set(fields(scalar)) == {"body.value"}
    assert fields(plain.post("/tagged?offset=x", json={})) == ["query.offset"]
    broken = plain.post("/tagged", content=b"{", headers={"content-type": "application/json"})
    assert fields(broken) == ["body[1]"]


def test_feedback_errors_name_the_field_of_the_shape_sent(api: TestClient) -> None:
    url = "/api/v1/deployments/churn/feedback"
    batch = api.post(url, json={"items": [{"label": 1}]})
    assert batch.json()["error"]["message"] == "body.items[0].request_id: Field required"
    assert fields(batch) == ["body.items[0].request_id"]
    assert fields(api.post(url, json={"label": 1})) == ["body.request_id"]
    empty = api.post(url, json={"request_id": "r1"})
    assert fields(empty) == ["body"] and "needs `label`" in empty.json()["error"]["message"]
    assert "function-after" not in empty.text and "FeedbackItem" not in empty.text
