from typing import Any

import pytest
from pydantic import ValidationError

from app.pipelines.spec import (
    ALLOWED_ESTIMATORS,
    CLASSIFICATION_METRICS,
    REGRESSION_METRICS,
    TASK_STATES,
    PipelineSpec,
    TaskSpec,
    cache_key,
    downstream,
    to_dot,
    to_mermaid,
    topological_order,
    upstream,
)

TRAIN: dict[str, Any] = {
    "estimator": "sklearn.ensemble.RandomForestClassifier",
    "hyperparameters": {"n_estimators": 50, "max_depth": None, "class_weight": "balanced"},
    "target": "churned",
    "dataset": "churn",
}


def chain() -> dict[str, Any]:
    return {
        "tasks": [
            {"name": "train", "type": "train", "params": TRAIN},
            {
                "name": "evaluate",
                "type": "evaluate",
                "params": {"thresholds": {"min": {"accuracy": 0.8}, "max": {"log_loss": 0.5}}},
                "depends_on": ["train"],
            },
            {
                "name": "register",
                "type": "register",
                "params": {"model": "churn", "alias": "candidate"},
                "depends_on": ["evaluate"],
                "when": "blessed:evaluate",
            },
            {"name": "package", "type": "package", "depends_on": ["register"], "retries": 2},
        ]
    }


def pkg(name: str, *deps: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "package", "depends_on": list(deps), **extra}


def reject(spec: dict[str, Any]) -> tuple[tuple[int | str, ...], str]:
    with pytest.raises(ValidationError) as info:
        PipelineSpec.model_validate(spec)
    first = info.value.errors()[0]
    return tuple(first["loc"]), first["msg"]


def one(task: dict[str, Any]) -> dict[str, Any]:
    return {"tasks": [task]}


# ---- valid specs ---------------------------------------------------------------------------------


def test_standard_chain_is_valid_and_normalised() -> None:
    spec = PipelineSpec.model_validate(chain())
    assert topological_order(spec) == ["train", "evaluate", "register", "package"]
    train = spec.tasks[0].params
    assert train["test_size"] == 0.2
    assert train["seed"] == 0
    assert train["preprocessing"] == "auto"
    evaluate = spec.tasks[1].params
    assert evaluate["compare_to_champion"] is True
    assert evaluate["tolerance"] == 0.0
    assert spec.tasks[2].when_task == "evaluate"
    assert spec.tasks[3].retries == 2
    assert spec.tasks[3].retry_backoff_seconds == 2.0
    assert spec.tasks[3].timeout == 3600


def test_stored_spec_round_trips() -> None:
    spec = PipelineSpec.model_validate(chain())
    dumped = spec.model_dump(mode="json")
    assert PipelineSpec.model_validate(dumped).model_dump(mode="json") == dumped


def test_diamond() -> None:
    spec = PipelineSpec.model_validate(
        {"tasks": [pkg("d", "b", "c"), pkg("b", "a"), pkg("c", "a"), pkg("a")]}
    )
    assert topological_order(spec) == ["a", "b", "c", "d"]
    assert upstream(spec, "d") == {"a", "b", "c"}
    assert downstream(spec, "a") == {"b", "c", "d"}
    assert downstream(spec, "b") == {"d"}
    assert upstream(spec, "a") == set()


def test_independent_parallel_tasks() -> None:
    spec = PipelineSpec.model_validate({"tasks": [pkg("z"), pkg("y"), pkg("x")]})
    assert topological_order(spec) == ["z", "y", "x"]
    assert upstream(spec, "y") == set()
    assert downstream(spec, "y") == set()


def test_repo_entrypoint_keeps_only_given_params() -> None:
    spec = PipelineSpec.model_validate(
        one({"name": "fit", "type": "train", "params": {"entrypoint": "repo", "seed": 7}})
    )
    assert spec.tasks[0].params == {"entrypoint": "repo", "seed": 7}


def test_other_task_types() -> None:
    spec = PipelineSpec.model_validate(
        {
            "tasks": [
                {"name": "prep", "type": "python", "params": {"function": "pkg.mod:run"}},
                {"name": "ship", "type": "deploy", "params": {"deployment": "churn-api"}},
            ]
        }
    )
    assert spec.tasks[0].params == {"function": "pkg.mod:run", "args": {}}
    assert spec.tasks[1].params == {
        "deployment": "churn-api",
        "environment": "staging",
        "strategy": "direct",
    }


def test_exported_constants() -> None:
    assert "sklearn.svm.SVC" in ALLOWED_ESTIMATORS
    assert "sklearn.linear_model.LogisticRegression" in ALLOWED_ESTIMATORS
    assert len(ALLOWED_ESTIMATORS) == 22
    assert "roc_auc" in CLASSIFICATION_METRICS
    assert "rmse" in REGRESSION_METRICS


# ---- rejections ----------------------------------------------------------------------------------


def test_unknown_type() -> None:
    loc, msg = reject(one({"name": "a", "type": "bake"}))
    assert loc == ("tasks", 0, "type")
    assert "'train'" in msg


def test_unknown_dependency() -> None:
    loc, msg = reject({"tasks": [pkg("a"), pkg("b", "ghost")]})
    assert loc == ()
    assert "task 'b' depends on unknown task 'ghost'" in msg


def test_self_dependency() -> None:
    loc, msg = reject({"tasks": [pkg("a"), pkg("b", "a", "b")]})
    assert loc == ("tasks", 1, "depends_on")
    assert "task 'b' depends on itself" in msg


def test_repeated_dependency() -> None:
    loc, msg = reject({"tasks": [pkg("a"), pkg("b", "a", "a")]})
    assert loc == ("tasks", 1, "depends_on")
    assert "'a' more than once" in msg


def test_two_node_cycle() -> None:
    loc, msg = reject({"tasks": [pkg("a", "b"), pkg("b", "a")]})
    assert loc == ()
    assert "cycle: a -> b -> a" in msg


def test_three_node_cycle_is_named_in_run_order() -> None:
    loc, msg = reject(
        {"tasks": [pkg("start"), pkg("a", "c", "start"), pkg("b", "a"), pkg("c", "b")]}
    )
    assert loc == ()
    assert "cycle: a -> b -> c -> a" in msg


def test_cycle_reported_even_behind_a_downstream_task() -> None:
    _, msg = reject({"tasks": [pkg("tail", "y"), pkg("x", "y"), pkg("y", "x")]})
    assert "cycle: x -> y -> x" in msg


def test_duplicate_names() -> None:
    loc, msg = reject({"tasks": [pkg("a"), pkg("b"), pkg("a")]})
    assert loc == ()
    assert "duplicate task names: a" in msg


@pytest.mark.parametrize("name", ["Train", "1st", "", "has space", "x" * 65])
def test_bad_name(name: str) -> None:
    loc, _ = reject(one(pkg(name)))
    assert loc == ("tasks", 0, "name")


def test_estimator_outside_allowlist() -> None:
    params = {**TRAIN, "estimator": "os.system"}
    loc, msg = reject(one({"name": "fit", "type": "train", "params": params}))
    assert loc == ("tasks", 0, "params")
    assert "task 'fit'" in msg
    assert "estimator 'os.system' is not allowed" in msg


def test_unknown_train_param() -> None:
    params = {**TRAIN, "learning_rate": 0.1}
    loc, msg = reject(one({"name": "fit", "type": "train", "params": params}))
    assert loc == ("tasks", 0, "params")
    assert "task 'fit'" in msg
    assert "unknown param 'learning_rate'" in msg


def test_unknown_repo_train_param() -> None:
    params = {"entrypoint": "repo", "preprocessing": "none"}
    loc, msg = reject(one({"name": "fit", "type": "train", "params": params}))
    assert loc == ("tasks", 0, "params")
    assert "unknown param 'preprocessing'" in msg


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, "needs 'estimator'"),
        ({**TRAIN, "entrypoint": "repo"}, "not both"),
        ({"entrypoint": "docker"}, "entrypoint"),
        ({"estimator": TRAIN["estimator"]}, "target: Field required"),
        ({**TRAIN, "test_size": 1.5}, "test_size"),
        ({**TRAIN, "preprocessing": "scale"}, "preprocessing"),
    ],
)
def test_bad_train_params(params: dict[str, Any], expected: str) -> None:
    loc, msg = reject(one({"name": "fit", "type": "train", "params": params}))
    assert loc == ("tasks", 0, "params")
    assert expected in msg


@pytest.mark.parametrize("value", [{"a": 1}, [1, {"a": 1}], [[1, 2]], float("nan")])
def test_hyperparameter_must_be_scalar_or_scalar_list(value: Any) -> None:
    params = {**TRAIN, "hyperparameters": {"max_depth": value}}
    loc, msg = reject(one({"name": "fit", "type": "train", "params": params}))
    assert loc == ("tasks", 0, "params")
    assert "hyperparameter 'max_depth' must be a JSON scalar or a list of scalars" in msg


def test_hyperparameter_scalar_list_is_fine() -> None:
    params = {**TRAIN, "hyperparameters": {"hidden": [10, 5], "flag": True, "x": 0.5}}
    PipelineSpec.model_validate(one({"name": "fit", "type": "train", "params": params}))


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"thresholds": {"min": {"accurcy": 0.9}}}, "unknown metric 'accurcy' in thresholds.min"),
        ({"thresholds": {"max": {"mse": 1.0}}}, "unknown metric 'mse' in thresholds.max"),
        ({"thresholds": {"above": {"f1": 0.5}}}, "thresholds.above"),
        ({"primary_metric": "auc"}, "unknown primary_metric 'auc'"),
        ({"min": {"f1": 0.5}}, "unknown param 'min'"),
    ],
)
def test_bad_evaluate_params(params: dict[str, Any], expected: str) -> None:
    loc, msg = reject(one({"name": "gate", "type": "evaluate", "params": params}))
    assert loc == ("tasks", 0, "params")
    assert "task 'gate'" in msg
    assert expected in msg


@pytest.mark.parametrize(
    ("task_type", "params", "expected"),
    [
        ("register", {}, "model: Field required"),
        ("register", {"model": "-bad"}, "model"),
        ("register", {"model": "churn", "alias": "Prod!"}, "alias"),
        ("package", {"format": "zip"}, "unknown param 'format' (allowed: none)"),
        ("deploy", {"deployment": "api", "replicas": 2}, "unknown param 'replicas'"),
        ("python", {"function": "not a function"}, "function"),
        ("python", {"function": "mod.fn"}, "function"),
    ],
)
def test_bad_params_for_other_types(task_type: str, params: dict[str, Any], expected: str) -> None:
    loc, msg = reject(one({"name": "t", "type": task_type, "params": params}))
    assert loc == ("tasks", 0, "params")
    assert expected in msg


def _with_when(when: str) -> dict[str, Any]:
    spec = chain()
    spec["tasks"][2]["when"] = when
    return spec


def test_when_unknown_task() -> None:
    loc, msg = reject(_with_when("blessed:ghost"))
    assert loc == ()
    assert "task 'register': when names unknown task 'ghost'" in msg


def test_when_not_upstream() -> None:
    spec = chain()
    spec["tasks"].append(
        {"name": "side", "type": "evaluate", "depends_on": ["train"]},
    )
    spec["tasks"][2]["when"] = "blessed:side"
    loc, msg = reject(spec)
    assert loc == ()
    assert "when names 'side', which is not upstream of it" in msg


def test_when_not_an_evaluate_task() -> None:
    loc, msg = reject(_with_when("blessed:train"))
    assert loc == ()
    assert "'train', a train task; it must name an evaluate task" in msg


def test_when_bad_form() -> None:
    loc, msg = reject(_with_when("passed:evaluate"))
    assert loc == ("tasks", 2, "when")
    assert "blessed:<evaluate task>" in msg


def test_when_may_name_a_transitive_ancestor() -> None:
    spec = chain()
    spec["tasks"][3]["when"] = "blessed:evaluate"
    PipelineSpec.model_validate(spec)


@pytest.mark.parametrize("retries", [-1, 11])
def test_retries_out_of_range(retries: int) -> None:
    loc, _ = reject(one(pkg("a", retries=retries)))
    assert loc == ("tasks", 0, "retries")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timeout", 0),
        ("timeout", 86401),
        ("retry_backoff_seconds", 0.01),
        ("memory_limit_mb", 32),
    ],
)
def test_other_limits(field: str, value: Any) -> None:
    loc, _ = reject(one(pkg("a", **{field: value})))
    assert loc == ("tasks", 0, field)


def test_extra_top_level_key() -> None:
    loc, msg = reject({**chain(), "schedule": "daily"})
    assert loc == ("schedule",)
    assert "Extra inputs are not permitted" in msg


def test_extra_task_key() -> None:
    loc, _ = reject(one(pkg("a", image="python:3.11")))
    assert loc == ("tasks", 0, "image")


def test_task_count_limits() -> None:
    loc, _ = reject({"tasks": []})
    assert loc == ("tasks",)
    loc, _ = reject({"tasks": [pkg(f"t{i}") for i in range(101)]})
    assert loc == ("tasks",)


# ---- order and ancestry --------------------------------------------------------------------------


def test_topological_order_ties_follow_declaration_order() -> None:
    tasks = [pkg("c"), pkg("a"), pkg("z", "a"), pkg("b"), pkg("y", "c")]
    spec = PipelineSpec.model_validate({"tasks": tasks})
    assert topological_order(spec) == ["c", "a", "z", "b", "y"]
    assert all(topological_order(spec) == ["c", "a", "z", "b", "y"] for _ in range(5))


def test_topological_order_respects_late_declared_dependencies() -> None:
    spec = PipelineSpec.model_validate({"tasks": [pkg("b", "a"), pkg("c"), pkg("a")]})
    assert topological_order(spec) == ["c", "a", "b"]


def test_upstream_and_downstream_on_chain() -> None:
    spec = PipelineSpec.model_validate(chain())
    assert upstream(spec, "package") == {"train", "evaluate", "register"}
    assert downstream(spec, "evaluate") == {"register", "package"}
    with pytest.raises(KeyError):
        upstream(spec, "ghost")
    with pytest.raises(KeyError):
        downstream(spec, "ghost")


# ---- diagrams ------------------------------------------------------------------------------------


def test_mermaid_without_states() -> None:
    text = to_mermaid(PipelineSpec.model_validate(chain()))
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    assert '    n0["train<br/>train"]' in lines
    assert '    n1["evaluate<br/>evaluate"]' in lines
    assert '    n3["package<br/>package"]' in lines
    assert "    n0 --> n1" in lines
    assert "    n2 --> n3" in lines
    assert "classDef" not in text


def test_mermaid_with_states() -> None:
    spec = PipelineSpec.model_validate(chain())
    text = to_mermaid(spec, {"train": "succeeded", "evaluate": "running", "register": "bogus"})
    for state in TASK_STATES:
        assert f"classDef {state} " in text
    assert "    class n0 succeeded" in text.splitlines()
    assert "    class n1 running" in text.splitlines()
    assert "class n2" not in text
    assert "class n3" not in text


def test_mermaid_ids_survive_reserved_names() -> None:
    spec = PipelineSpec.model_validate({"tasks": [pkg("end"), pkg("class", "end")]})
    text = to_mermaid(spec)
    assert 'n0["end<br/>package"]' in text
    assert "n0 --> n1" in text


def test_dot_without_states() -> None:
    text = to_dot(PipelineSpec.model_validate(chain()))
    assert text.startswith("digraph pipeline {\n  rankdir=LR;")
    assert text.rstrip().endswith("}")
    assert '"train" [label="train\\ntrain", fillcolor="#ffffff"];' in text
    assert '"train" -> "evaluate";' in text
    assert '"register" -> "package";' in text


def test_dot_with_states() -> None:
    spec = PipelineSpec.model_validate(chain())
    text = to_dot(spec, {"train": "succeeded", "evaluate": "failed", "register": "???"})
    assert '"train" [label="train\\ntrain", fillcolor="#d4edda"];' in text
    assert '"evaluate" [label="evaluate\\nevaluate", fillcolor="#f8d7da"];' in text
    assert '"register" [label="register\\nregister", fillcolor="#ffffff"];' in text


# ---- cache keys ----------------------------------------------------------------------------------


def _task(**changes: Any) -> TaskSpec:
    base: dict[str, Any] = {
        "name": "fit",
        "type": "train",
        "params": TRAIN,
        "depends_on": ["prep"],
        "cache": True,
    }
    return TaskSpec.model_validate({**base, **changes})


def _key(task: TaskSpec | None = None, **changes: Any) -> str:
    kwargs: dict[str, Any] = {
        "commit": "abc123",
        "dataset_digests": ["d1", "d2"],
        "upstream_outputs": {"prep": {"rows": 10, "path": "s3://x"}},
    }
    kwargs.update(changes)
    return cache_key(task or _task(), **kwargs)


def test_cache_key_is_stable() -> None:
    key = _key()
    assert key == _key()
    assert len(key) == 64
    int(key, 16)


def test_cache_key_ignores_ordering() -> None:
    reordered = dict(reversed(list(TRAIN.items())))
    reordered["hyperparameters"] = dict(reversed(list(TRAIN["hyperparameters"].items())))
    assert _key(_task(params=reordered)) == _key()
    assert _key(dataset_digests=["d2", "d1"]) == _key()
    assert _key(upstream_outputs={"prep": {"path": "s3://x", "rows": 10}}) == _key()


def test_cache_key_ignores_execution_settings_and_unrelated_outputs() -> None:
    assert _key(_task(name="other", retries=3, timeout=10)) == _key()
    outputs = {"prep": {"rows": 10, "path": "s3://x"}, "unrelated": {"rows": 1}}
    assert _key(upstream_outputs=outputs) == _key()


def test_cache_key_same_for_explicit_defaults() -> None:
    assert _key(_task(params={**TRAIN, "test_size": 0.2, "seed": 0})) == _key()


def test_cache_key_changes_with_inputs() -> None:
    base = _key()
    assert _key(_task(params={**TRAIN, "seed": 1})) != base
    assert _key(commit="def456") != base
    assert _key(commit=None) != base
    assert _key(dataset_digests=["d1", "d3"]) != base
    assert _key(dataset_digests=["d1"]) != base
    assert _key(upstream_outputs={"prep": {"rows": 11, "path": "s3://x"}}) != base
    assert _key(_task(type="python", params={"function": "m:f"})) != base
