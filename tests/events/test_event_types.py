"""One list of event types: every type the code emits is declared, can be subscribed to and
is listed in the OpenAPI document; an undeclared type cannot be recorded."""

import ast
import importlib
from pathlib import Path
from typing import Any, cast, get_args

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.events import service as events
from app.events.types import EventType, domain_of

APP = Path(__file__).resolve().parents[2] / "app"
PUBLIC_URL = "https://1.1.1.1/hooks"  # a literal public address: no DNS, never called here


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(APP.parent).with_suffix("").parts)


def _members(node: ast.AST) -> set[str]:
    """`EventType.x` references inside node, as their values."""
    return {
        EventType[n.attr].value
        for n in ast.walk(node)
        if isinstance(n, ast.Attribute)
        and isinstance(n.value, ast.Name)
        and n.value.id == "EventType"
    }


def _literal_values(module: str, function: ast.FunctionDef, name: str) -> tuple[str, ...]:
    """The values a parameter typed by a Literal alias of its module can take."""
    for arg in function.args.args + function.args.kwonlyargs:
        if arg.arg == name and isinstance(arg.annotation, ast.Name):
            return tuple(get_args(getattr(importlib.import_module(module), arg.annotation.id)))
    raise AssertionError(f"{module}.{function.name}: {name!r} is not typed by a Literal alias")


def _composed(module: str, function: ast.FunctionDef, call: ast.Call) -> set[str]:
    """`declared(f"prefix.{param}")` → prefix + every value of the param's Literal type."""
    [text] = call.args
    assert isinstance(text, ast.JoinedStr), f"{module}: declared() takes an f-string here"
    prefix, placeholder = text.values
    assert isinstance(prefix, ast.Constant) and isinstance(placeholder, ast.FormattedValue)
    assert isinstance(placeholder.value, ast.Name)
    return {prefix.value + v for v in _literal_values(module, function, placeholder.value.id)}


def _type_argument(
    module: str, tree: ast.Module, function: ast.FunctionDef, arg: ast.expr
) -> set[str]:
    where = f"{module}.{function.name} line {arg.lineno}"
    if isinstance(arg, ast.Call) and isinstance(arg.func, ast.Name) and arg.func.id == "declared":
        return _composed(module, function, arg)
    if isinstance(arg, ast.Name):
        params = {a.arg: a.annotation for a in function.args.args + function.args.kwonlyargs}
        annotation = params.get(arg.id)
        if isinstance(annotation, ast.Name) and annotation.id == "EventType":
            return _members(tree)  # passed through: its callers in this module name members
        assigned = [
            n.value
            for n in ast.walk(function)
            if isinstance(n, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == arg.id for t in n.targets)
        ]
        assert assigned, f"{where}: cannot tell which event type {arg.id!r} holds"
        return set().union(*(_type_argument(module, tree, function, a) for a in assigned))
    found = _members(arg)
    assert found, f"{where}: record an EventType member (or declared(f'...') of a Literal)"
    return found


def emitted_types() -> set[str]:
    """Every type passed to events.record anywhere in app/, read from the source."""
    emitted: set[str] = set()
    for path in sorted(APP.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        module = _module_name(path)
        for function in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
            for call in [n for n in ast.walk(function) if isinstance(n, ast.Call)]:
                func = call.func
                if (
                    isinstance(func, ast.Attribute)
                    and func.attr == "record"
                    and isinstance(func.value, ast.Name)
                    and func.value.id == "events"
                ):
                    emitted |= _type_argument(module, tree, function, call.args[1])
    return emitted


def test_every_emitted_type_is_declared_and_every_declared_type_is_emitted() -> None:
    emitted = emitted_types()
    assert emitted - {t.value for t in EventType} == set()
    assert {t.value for t in EventType} - emitted == set(), "declared but never emitted"
    # the ones the issue found unsubscribable are among them
    assert {"policy.fired", "policy.coalesced", "retrain.failed", "pipeline_run.created"} <= emitted


def test_every_emitted_type_and_its_domain_can_be_subscribed_to(api: TestClient) -> None:
    emitted = sorted(emitted_types())
    patterns = [*emitted, *sorted({f"{domain_of(t)}.*" for t in emitted}), "*"]
    for pattern in patterns:
        created = api.post(
            "/api/v1/subscriptions", json={"url": PUBLIC_URL, "event_types": [pattern]}
        )
        assert created.status_code == 201, (pattern, created.text)
    spec = api.get("/openapi.json").json()["components"]["schemas"]
    for schema in ("SubscriptionCreate", "SubscriptionUpdate"):
        text = str(spec[schema]["properties"]["event_types"])
        assert all(repr(p) in text for p in patterns), schema


def test_an_undeclared_type_cannot_be_recorded(session: Session) -> None:
    with pytest.raises(ValueError, match="undeclared event type"):
        events.record(session, cast(Any, "model.exploded"), "model:x", {})


def test_an_unknown_type_is_refused_with_the_known_ones_listed(api: TestClient) -> None:
    answer = api.post(
        "/api/v1/subscriptions", json={"url": PUBLIC_URL, "event_types": ["policy.exploded"]}
    )
    assert answer.status_code == 422
    assert "policy.exploded" in answer.text and "policy.fired" in answer.text
