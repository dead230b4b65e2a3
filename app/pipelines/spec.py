"""Pipeline specs: a user-posted DAG of tasks, validated up front so bad specs fail with a 422.

Pure module: pydantic models plus graph helpers (order, ancestry, diagrams, cache keys).
"""

import hashlib
import json
import math
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

TaskType = Literal["train", "evaluate", "register", "package", "deploy", "python"]

TASK_NAME_PATTERN = r"^[a-z][a-z0-9_-]*$"
# Same shape as registered model and dataset names elsewhere in Flywheel.
RESOURCE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
ALIAS_PATTERN = r"^[a-z][a-z0-9_\-]*$"
FUNCTION_PATTERN = r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$"
WHEN_PREFIX = "blessed:"

ALLOWED_ESTIMATORS: frozenset[str] = frozenset(
    f"sklearn.{module}.{cls}"
    for module, classes in {
        "linear_model": (
            "LogisticRegression LinearRegression Ridge Lasso ElasticNet SGDClassifier SGDRegressor"
        ),
        "ensemble": (
            "RandomForestClassifier RandomForestRegressor GradientBoostingClassifier "
            "GradientBoostingRegressor HistGradientBoostingClassifier "
            "HistGradientBoostingRegressor ExtraTreesClassifier ExtraTreesRegressor"
        ),
        "tree": "DecisionTreeClassifier DecisionTreeRegressor",
        "neighbors": "KNeighborsClassifier KNeighborsRegressor",
        "naive_bayes": "GaussianNB",
        "svm": "SVC SVR",
    }.items()
    for cls in classes.split()
)
CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss")
REGRESSION_METRICS = ("rmse", "mae", "r2")
KNOWN_METRICS = frozenset(CLASSIFICATION_METRICS + REGRESSION_METRICS)
# state -> (fill, stroke); shared by the Mermaid and DOT renderers.
STATE_COLOURS: dict[str, tuple[str, str]] = {
    "succeeded": ("#d4edda", "#28a745"),
    "failed": ("#f8d7da", "#dc3545"),
    "running": ("#cce5ff", "#007bff"),
    "skipped": ("#e2e3e5", "#6c757d"),
    "cancelled": ("#e2e3e5", "#343a40"),
    "rejected": ("#ffe5d0", "#fd7e14"),
    "pending": ("#ffffff", "#adb5bd"),
    "queued": ("#f8f9fa", "#6c757d"),
    "retrying": ("#fff3cd", "#ffc107"),
}
TASK_STATES = tuple(STATE_COLOURS)
CACHE_KEY_VERSION = 1


# ---- per-type params ---------------------------------------------------------------------------


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


ExcludeColumns = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=250)]] | None,
    Field(
        max_length=1000,
        description="Columns of the dataset the model neither learns from nor takes as "
        "inputs (a timestamp, an id). A retraining policy leaves out its time column unless "
        "this is set.",
    ),
]


class _TrainEstimatorParams(_Params):
    estimator: str
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    target: str = Field(min_length=1, max_length=250)
    dataset: str | None = Field(default=None, max_length=250, pattern=RESOURCE_NAME_PATTERN)
    test_size: float = Field(default=0.2, gt=0, lt=1)
    seed: int = 0
    preprocessing: Literal["auto", "none"] = "auto"
    exclude_columns: ExcludeColumns = None


class _TrainRepoParams(_Params):
    entrypoint: Literal["repo"]
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    target: str | None = Field(default=None, min_length=1, max_length=250)
    dataset: str | None = Field(default=None, max_length=250, pattern=RESOURCE_NAME_PATTERN)
    test_size: float | None = Field(default=None, gt=0, lt=1)
    seed: int | None = None
    exclude_columns: ExcludeColumns = None


class _Thresholds(_Params):
    min: dict[str, float] = Field(default_factory=dict)
    max: dict[str, float] = Field(default_factory=dict)


class _EvaluateParams(_Params):
    thresholds: _Thresholds = Field(default_factory=_Thresholds)
    compare_to_champion: bool = True
    primary_metric: str | None = None
    tolerance: float = Field(default=0.0, ge=0)
    dataset_version: int | None = Field(default=None, ge=1)


class _RegisterParams(_Params):
    model: str = Field(min_length=1, max_length=250, pattern=RESOURCE_NAME_PATTERN)
    alias: str | None = Field(default=None, min_length=1, max_length=64, pattern=ALIAS_PATTERN)


class _PackageParams(_Params):
    pass


class _DeployParams(_Params):
    deployment: str = Field(max_length=63, pattern=r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
    environment: str = "staging"
    strategy: Literal["direct", "canary"] = Field(
        default="direct",
        description="direct: serve the new version at once; canary: promote it by the "
        "deployment's rollout policy (created directly the first time).",
    )

    @field_validator("environment")
    @classmethod
    def _staging_only(cls, value: str) -> str:
        if value != "staging":
            raise ValueError(
                "pipelines deploy to staging; promote to production with "
                "POST /api/v1/deployments/{name}/promote (deployer role)"
            )
        return value


class _PythonParams(_Params):
    function: str = Field(max_length=500, pattern=FUNCTION_PATTERN)
    args: dict[str, Any] = Field(default_factory=dict)


_P = TypeVar("_P", bound=_Params)


def _parse(model: type[_P], params: dict[str, Any]) -> _P:
    """Validate with a params model, keeping unknown keys and bad values in one readable message."""
    allowed = model.model_fields.keys()
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(
            f"unknown param {unknown[0]!r} (allowed: {', '.join(sorted(allowed)) or 'none'})"
        )
    try:
        parsed = model.model_validate(params)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or 'params'}: {err['msg']}"
            for err in exc.errors()
        ]
        raise ValueError("; ".join(problems)) from None
    return parsed


def _check_hyperparameters(hyper: dict[str, Any]) -> None:
    """Hyperparameters go straight into an estimator constructor, so only JSON scalars pass."""

    def scalar(value: Any) -> bool:
        if isinstance(value, float):
            return math.isfinite(value)
        return value is None or isinstance(value, str | int | bool)

    for key, value in hyper.items():
        ok = all(scalar(v) for v in value) if isinstance(value, list) else scalar(value)
        if not ok:
            raise ValueError(
                f"hyperparameter {key!r} must be a JSON scalar or a list of scalars, "
                f"got {type(value).__name__}"
            )


def _check_excluded(excluded: list[str] | None, target: str | None) -> None:
    """Which columns exist is known when the run reads its data; the target never goes."""
    if excluded and target in excluded:
        raise ValueError(f"exclude_columns names the target {target!r}; it is what is learned")
    if excluded and len(set(excluded)) != len(excluded):
        raise ValueError("exclude_columns names a column twice")


def _train(params: dict[str, Any]) -> dict[str, Any]:
    if "entrypoint" in params:
        if "estimator" in params:
            raise ValueError("give either 'estimator' or 'entrypoint', not both")
        repo = _parse(_TrainRepoParams, params)
        _check_hyperparameters(repo.hyperparameters)
        _check_excluded(repo.exclude_columns, repo.target)
        # Only what the user set: the repository's flywheel.yaml supplies its own defaults.
        return repo.model_dump(exclude_unset=True)
    if "estimator" not in params:
        raise ValueError("train needs 'estimator' (an sklearn class) or 'entrypoint': 'repo'")
    parsed = _parse(_TrainEstimatorParams, params)
    if parsed.estimator not in ALLOWED_ESTIMATORS:
        raise ValueError(
            f"estimator {parsed.estimator!r} is not allowed "
            "(see ALLOWED_ESTIMATORS, e.g. 'sklearn.ensemble.RandomForestClassifier')"
        )
    _check_hyperparameters(parsed.hyperparameters)
    _check_excluded(parsed.exclude_columns, parsed.target)
    # Left out when unset, so a policy can tell "not set" (its default applies) from [].
    return parsed.model_dump(
        exclude={"exclude_columns"} if parsed.exclude_columns is None else None
    )


def _evaluate(params: dict[str, Any]) -> dict[str, Any]:
    parsed = _parse(_EvaluateParams, params)
    for bound in ("min", "max"):
        for metric in getattr(parsed.thresholds, bound):
            if metric not in KNOWN_METRICS:
                raise ValueError(
                    f"unknown metric {metric!r} in thresholds.{bound} "
                    f"(known: {', '.join(CLASSIFICATION_METRICS + REGRESSION_METRICS)})"
                )
    if parsed.primary_metric is not None and parsed.primary_metric not in KNOWN_METRICS:
        raise ValueError(f"unknown primary_metric {parsed.primary_metric!r}")
    return parsed.model_dump()


def _simple(model: type[_Params]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda params: _parse(model, params).model_dump()


_PARAM_CHECKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "train": _train,
    "evaluate": _evaluate,
    "register": _simple(_RegisterParams),
    "package": _simple(_PackageParams),
    "deploy": _simple(_DeployParams),
    "python": _simple(_PythonParams),
}


# ---- specs ---------------------------------------------------------------------------------------


class TaskSpec(BaseModel):
    """One node of the DAG. `params` is normalised per type (documented defaults filled in)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=TASK_NAME_PATTERN)
    type: TaskType
    params: dict[str, Any] = Field(default_factory=dict, validate_default=True)
    depends_on: list[str] = Field(default_factory=list, max_length=100)
    retries: int = Field(default=0, ge=0, le=10)
    retry_backoff_seconds: float = Field(
        default=2.0, ge=0.1, le=3600, description="Delay before retry n is base * 2**(n-1)."
    )
    timeout: int = Field(default=3600, ge=1, le=86400, description="Seconds.")
    memory_limit_mb: int | None = Field(default=None, ge=64, le=262144)
    when: str | None = Field(
        default=None, description="'blessed:<evaluate task>': run only if it blessed the model."
    )
    cache: bool = False

    @field_validator("params")
    @classmethod
    def _check_params(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        task_type = info.data.get("type")
        if task_type is None:  # the type itself is invalid and already reported
            return params
        try:
            return _PARAM_CHECKS[task_type](params)
        except ValueError as exc:
            raise ValueError(f"task {info.data.get('name', '?')!r}: {exc}") from None

    @field_validator("depends_on")
    @classmethod
    def _check_depends_on(cls, deps: list[str], info: ValidationInfo) -> list[str]:
        name = info.data.get("name")
        if name is not None and name in deps:
            raise ValueError(f"task {name!r} depends on itself")
        repeated = sorted({d for d in deps if deps.count(d) > 1})
        if repeated:
            raise ValueError(f"task {name!r} lists dependency {repeated[0]!r} more than once")
        return deps

    @field_validator("when")
    @classmethod
    def _check_when(cls, when: str | None) -> str | None:
        if when is None:
            return None
        target = when.removeprefix(WHEN_PREFIX)
        if not when.startswith(WHEN_PREFIX) or not target:
            raise ValueError(f"when must be 'blessed:<evaluate task>', got {when!r}")
        return when

    @property
    def when_task(self) -> str | None:
        """The evaluate task named by `when`, if any."""
        return self.when.removeprefix(WHEN_PREFIX) if self.when else None


class PipelineSpec(BaseModel):
    """A whole pipeline; graph-level problems are rejected here so nothing invalid is stored."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskSpec] = Field(min_length=1, max_length=100)

    @model_validator(mode="after")
    def _check_graph(self) -> "PipelineSpec":
        names = [t.name for t in self.tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate task names: {', '.join(duplicates)}")
        known = set(names)
        for task in self.tasks:
            for dep in task.depends_on:
                if dep not in known:
                    raise ValueError(f"task {task.name!r} depends on unknown task {dep!r}")
        cycle = _find_cycle(self.tasks)
        if cycle:
            raise ValueError(f"cycle: {' -> '.join(cycle)}")
        by_name = {t.name: t for t in self.tasks}
        for task in self.tasks:
            target = task.when_task
            if target is None:
                continue
            if target not in known:
                raise ValueError(f"task {task.name!r}: when names unknown task {target!r}")
            if by_name[target].type != "evaluate":
                raise ValueError(
                    f"task {task.name!r}: when names {target!r}, a {by_name[target].type} task; "
                    "it must name an evaluate task"
                )
            if target not in upstream(self, task.name):
                raise ValueError(
                    f"task {task.name!r}: when names {target!r}, which is not upstream of it"
                )
        return self


# ---- graph helpers -------------------------------------------------------------------------------


def _find_cycle(tasks: list[TaskSpec]) -> list[str]:
    """One cycle in run order (dependency first), starting at its earliest declared task, or []."""
    order = {t.name: i for i, t in enumerate(tasks)}
    deps = {t.name: [d for d in t.depends_on if d in order] for t in tasks}
    remaining = set(order) - set(_kahn(tasks))
    if not remaining:
        return []
    # Every leftover task has a leftover dependency, so walking dependencies must loop.
    node, path = min(remaining, key=order.__getitem__), []
    while node not in path:
        path.append(node)
        node = next(d for d in deps[node] if d in remaining)
    loop = path[path.index(node) :][::-1]
    start = loop.index(min(loop, key=order.__getitem__))
    loop = loop[start:] + loop[:start]
    return [*loop, loop[0]]


def _children(tasks: list[TaskSpec]) -> dict[str, list[str]]:
    children: dict[str, list[str]] = {t.name: [] for t in tasks}
    for t in tasks:
        for d in t.depends_on:
            if d in children:
                children[d].append(t.name)
    return children


def _kahn(tasks: list[TaskSpec]) -> list[str]:
    """Kahn's algorithm, ties broken by declaration order; cyclic tasks are simply left out."""
    index = {t.name: i for i, t in enumerate(tasks)}
    indegree = {t.name: sum(1 for d in t.depends_on if d in index) for t in tasks}
    children = _children(tasks)
    ready = [t.name for t in tasks if indegree[t.name] == 0]
    result: list[str] = []
    while ready:
        node = min(ready, key=index.__getitem__)
        ready.remove(node)
        result.append(node)
        for child in children[node]:
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)
    return result


def topological_order(spec: PipelineSpec) -> list[str]:
    """Run order; deterministic so runs, logs and diagrams agree across processes."""
    return _kahn(spec.tasks)


def _closure(start: str, edges: dict[str, list[str]]) -> set[str]:
    if start not in edges:
        raise KeyError(f"unknown task {start!r}")
    seen: set[str] = set()
    stack = list(edges[start])
    while stack:
        node = stack.pop()
        if node not in seen and node in edges:
            seen.add(node)
            stack.extend(edges[node])
    return seen


def upstream(spec: PipelineSpec, task: str) -> set[str]:
    """Transitive ancestors of `task` (what must finish before it)."""
    return _closure(task, {t.name: list(t.depends_on) for t in spec.tasks})


def downstream(spec: PipelineSpec, task: str) -> set[str]:
    """Transitive descendants of `task` (what a failure or skip propagates to)."""
    return _closure(task, _children(spec.tasks))


def to_mermaid(spec: PipelineSpec, states: dict[str, str] | None = None) -> str:
    """Mermaid flowchart; node ids are n0, n1, ... so task names like `end` cannot break syntax."""
    ids = {t.name: f"n{i}" for i, t in enumerate(spec.tasks)}
    lines = ["flowchart LR"]
    lines += [f'    {ids[t.name]}["{t.name}<br/>{t.type}"]' for t in spec.tasks]
    lines += [f"    {ids[d]} --> {ids[t.name]}" for t in spec.tasks for d in t.depends_on]
    if states is not None:
        for state in TASK_STATES:
            fill, stroke = STATE_COLOURS[state]
            lines.append(f"    classDef {state} fill:{fill},stroke:{stroke},color:#000")
        lines += [
            f"    class {ids[t.name]} {states[t.name]}"
            for t in spec.tasks
            if states.get(t.name) in STATE_COLOURS
        ]
    return "\n".join(lines) + "\n"


def to_dot(spec: PipelineSpec, states: dict[str, str] | None = None) -> str:
    """Graphviz DOT for clients without Mermaid; unknown or missing states render white."""
    states = states or {}
    lines = [
        "digraph pipeline {",
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fillcolor="#ffffff"];',
    ]
    for t in spec.tasks:
        fill = STATE_COLOURS.get(states.get(t.name, ""), ("#ffffff", ""))[0]
        lines.append(f'  "{t.name}" [label="{t.name}\\n{t.type}", fillcolor="{fill}"];')
    lines += [f'  "{d}" -> "{t.name}";' for t in spec.tasks for d in t.depends_on]
    lines.append("}")
    return "\n".join(lines) + "\n"


def cache_key(
    task: TaskSpec,
    *,
    commit: str | None,
    dataset_digests: list[str],
    upstream_outputs: dict[str, Any],
) -> str:
    """Identity of an execution: equal keys mean the outputs can be reused.

    Only direct dependencies' outputs count (theirs already reflect their own inputs); name,
    retries, timeouts and `when` do not change what a task produces, so they are left out.
    """
    payload = {
        "v": CACHE_KEY_VERSION,
        "type": task.type,
        "params": task.params,
        "commit": commit,
        "datasets": sorted(set(dataset_digests)),
        "upstream": {d: upstream_outputs.get(d) for d in sorted(task.depends_on)},
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# Run params a task takes even when its spec leaves them out: tuned hyperparameters, and
# what a retraining policy sets (the model to continue from, the columns to leave out, the
# alias to register under).
RUN_LEVEL_PARAMS: dict[str, frozenset[str]] = {
    "train": frozenset({"hyperparameters", "continue_from", "exclude_columns"}),
    "register": frozenset({"alias"}),
}


def run_overrides(
    task_type: str, task_params: dict[str, Any], run_params: dict[str, Any]
) -> dict[str, Any]:
    """The run's params that a task takes: those its spec names, and the run-level ones of
    its type (a train task's hyperparameters, continue_from, exclude_columns)."""
    extra = RUN_LEVEL_PARAMS.get(task_type, frozenset())
    return {k: v for k, v in run_params.items() if k in task_params or k in extra}
