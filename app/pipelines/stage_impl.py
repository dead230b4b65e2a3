"""The bodies of the built-in task types."""

from pathlib import Path
from typing import Any

from sqlalchemy import select

from app.core.errors import AppError
from app.core.jobs import JobContext
from app.datasets.models import DatasetVersion
from app.deployments import rollouts
from app.deployments import service as deployments
from app.deployments.models import Deployment, Environment
from app.deployments.schemas import (
    DeploymentCreate,
    DeploymentUpdate,
    PromoteRequest,
    VariantSpec,
)
from app.ml import signature as signatures
from app.ml.model_files import ModelFileError, file_types
from app.pipelines.stages import (
    ALLOWED,
    Control,
    StageFailed,
    StageInput,
    StageResult,
    checkout_source,
    dataset_file,
    log,
    repo_config,
    run_runner,
    system_principal,
)
from app.registry import jobs as registry_jobs
from app.registry import packaging
from app.registry import service as registry
from app.registry.models import ModelVersion, RegisteredModel, VersionStatus
from app.registry.schemas import ModelCreate, SignatureInput, VersionCreate
from app.tracking import service as tracking
from app.tracking.models import Experiment, RunStatus
from app.tracking.schemas import (
    CodeVersion,
    ExperimentCreate,
    MetricPoint,
    RunCreate,
    RunInputSpec,
    RunUpdate,
)


def train(ctx: JobContext, stage: StageInput, control: Control, workdir: Path) -> StageResult:
    source, commit = checkout_source(ctx, stage, workdir)
    config = repo_config(source).get("train", {}) or {}
    params = stage.params
    entrypoint = config.get("entrypoint") if params.get("entrypoint") == "repo" else None
    if params.get("entrypoint") == "repo" and not entrypoint:
        raise StageFailed(
            "entrypoint: repo, but the repository has no train.entrypoint in flywheel.yaml"
        )
    target = params.get("target") or config.get("target")
    if not target:
        raise StageFailed("no target column: set params.target or train.target in flywheel.yaml")
    hyperparameters = {**(config.get("params") or {}), **(params.get("hyperparameters") or {})}
    excluded = list(params.get("exclude_columns") or [])
    with ctx.transaction() as session:
        parent, continue_from = _continue_from(ctx, session, params.get("continue_from"))
        version = dataset_file(
            ctx, session, stage.inputs.get("dataset_version_id"), named=params.get("dataset")
        )
        dataset_path, dataset_format = ctx.artifacts.resolve(version.uri), version.format
        experiment = _experiment(session, f"pipeline-{stage.pipeline}")
        code = (
            CodeVersion(repo=stage.repo_url, commit=commit, branch=stage.branch)
            if stage.repo_url and commit
            else None
        )
        run = tracking.create_run(
            session,
            RunCreate(
                experiment_id=experiment.id,
                name=f"{stage.pipeline}#{stage.run_id}/{stage.task_name}",
                params={
                    "estimator": params.get("estimator") or entrypoint or "",
                    **hyperparameters,
                },
                tags={
                    "pipeline": stage.pipeline,
                    "pipeline_run": str(stage.run_id),
                    "task": stage.task_name,
                },
                code_version=code,
                inputs=[RunInputSpec(dataset_version_id=version.id, context="training")],
            ),
        )
        run_id = run.id
    log(
        ctx, stage, f"training run {run_id} on dataset version {version.id} ({version.digest[:12]})"
    )
    request = {
        "stage": "train",
        "workdir": str(workdir),
        "dataset_path": str(dataset_path),
        "dataset_format": dataset_format,
        "target": target,
        "test_size": params.get("test_size", 0.2),
        "seed": params.get("seed", 0),
        "estimator": params.get("estimator"),
        "hyperparameters": hyperparameters,
        "preprocessing": params.get("preprocessing", "auto"),
        "exclude_columns": excluded,
        "entrypoint": entrypoint,
        "source_dir": str(source) if source else None,
        "allowed_estimators": ALLOWED,
        "memory_limit_mb": stage.memory_limit_mb,
        "continue_from": continue_from,
    }
    if continue_from is not None:
        log(ctx, stage, f"continuing v{parent} by {continue_from['method']}")
    try:
        result = run_runner(ctx, stage, control, request, workdir)
    except Exception:
        _end_run(ctx, run_id, RunStatus.failed)
        raise
    with ctx.transaction() as session:
        points = [MetricPoint(key=k, value=float(v)) for k, v in result.get("metrics", {}).items()]
        if points:
            tracking.log_metrics(session, run_id, points, limit=ctx.settings.max_metrics_per_batch)
        stored = ctx.artifacts.put_file(
            Path(result["model_path"]), max_bytes=ctx.settings.max_upload_bytes
        )
        tracking.record_artifact(session, run_id, "model.skops", stored, "application/octet-stream")
        tracking.update_run(session, run_id, RunUpdate(status=RunStatus.finished))
    log(ctx, stage, f"trained {result.get('model_class')}: {result.get('metrics')}")
    return StageResult(
        "succeeded",
        {
            "run_id": run_id,
            "artifact_path": "model.skops",
            "model_digest": stored.digest,
            "dataset_version_id": version.id,
            "dataset_digest": version.digest,
            "target": target,
            "exclude_columns": excluded,
            "commit": commit,
            "metrics": result.get("metrics", {}),
            "task": result.get("task"),
            "split": result.get("split", {}),
            "parent_version": parent,
            "continued": result.get("continued"),
        },
    )


def _continue_from(
    ctx: JobContext, session: Any, spec: dict[str, Any] | None
) -> tuple[int | None, dict[str, Any] | None]:
    """The registered version a retrain continues from, as the runner loads it."""
    if not spec:
        return None, None
    parent = session.get(ModelVersion, spec.get("version_id"))
    if parent is None:
        raise StageFailed(f"the version to continue from ({spec.get('version_id')}) is gone")
    return parent.version, {
        "model_path": str(ctx.artifacts.path_for_digest(parent.artifact_digest)),
        "digest": parent.artifact_digest,
        "types": parent.artifact_types or [],
        "method": spec.get("method", "warm_start"),
        "add_estimators": spec.get("add_estimators"),
        "batch_size": spec.get("batch_size", 256),
    }


def _experiment(session: Any, name: str) -> Experiment:
    found = session.scalar(select(Experiment).where(Experiment.name == name))
    return found or tracking.create_experiment(session, ExperimentCreate(name=name))


def _end_run(ctx: JobContext, run_id: int, status: RunStatus) -> None:
    with ctx.transaction() as session:
        tracking.update_run(session, run_id, RunUpdate(status=status))


def _trained(stage: StageInput) -> dict[str, Any]:
    trained = [out for name, out in stage.upstream.items() if stage.upstream_types[name] == "train"]
    if not trained:
        raise StageFailed(f"{stage.task_type} needs an upstream train task")
    return trained[0]


def evaluate(ctx: JobContext, stage: StageInput, control: Control, workdir: Path) -> StageResult:
    trained = _trained(stage)
    params = stage.params
    model_name = params.get("model") or stage.register_model
    with ctx.transaction() as session:
        model_path = ctx.artifacts.path_for_digest(trained["model_digest"])
        try:
            types = file_types(model_path)
        except ModelFileError as exc:
            raise StageFailed(str(exc)) from exc
        dataset = dataset_file(
            ctx, session, params.get("dataset_version") or trained["dataset_version_id"]
        )
        champion, champion_version = None, None
        model = (
            session.scalar(select(RegisteredModel).where(RegisteredModel.name == model_name))
            if model_name
            else None
        )
        current = registry.champion(session, model) if model is not None else None
        if current is not None and params.get("compare_to_champion", True):
            champion_version = current.version
            champion = {
                "model_path": str(ctx.artifacts.path_for_digest(current.artifact_digest)),
                "digest": current.artifact_digest,
                "types": current.artifact_types,
            }
    request = {
        "stage": "evaluate",
        "workdir": str(workdir),
        "model_path": str(model_path),
        "model_digest": trained["model_digest"],
        "model_types": types,
        "dataset_path": str(ctx.artifacts.resolve(dataset.uri)),
        "dataset_format": dataset.format,
        "target": trained["target"],
        "exclude_columns": trained.get("exclude_columns", []),
        # the holdout is rebuilt from the split the train task used
        "test_size": params.get("test_size", trained.get("split", {}).get("test_size", 0.2)),
        "seed": params.get("seed", trained.get("split", {}).get("seed", 0)),
        "use_holdout": params.get("dataset_version") is None,
        "memory_limit_mb": stage.memory_limit_mb,
        "champion": champion,
        "thresholds": params.get("thresholds", {}),
        "primary_metric": params.get("primary_metric"),
        "tolerance": params.get("tolerance", 0.0),
    }
    result = run_runner(ctx, stage, control, request, workdir)
    with ctx.transaction() as session:
        points = [
            MetricPoint(key=f"eval_{k}", value=float(v)) for k, v in result["metrics"].items()
        ]
        tracking.log_metrics(
            session, trained["run_id"], points, limit=ctx.settings.max_metrics_per_batch
        )
        tracking.update_run(
            session, trained["run_id"], RunUpdate(tags={"verdict": result["verdict"]})
        )
    log(ctx, stage, f"verdict {result['verdict']}: {result.get('reasons')}")
    outputs = {
        "verdict": result["verdict"],
        "reasons": result.get("reasons", []),
        "checks": result.get("checks", []),
        "metrics": result["metrics"],
        "champion_metrics": result.get("champion_metrics"),
        "champion_version": champion_version,
        "run_id": trained["run_id"],
    }
    status = "succeeded" if result["verdict"] == "blessed" else "rejected"
    error = None if status == "succeeded" else "rejected: " + "; ".join(result.get("reasons", []))
    return StageResult(status, outputs, error)


def _signature_without(session: Any, trained: dict[str, Any]) -> SignatureInput | None:
    """The inputs when the train task left columns out: the dataset's columns without the
    target and those (None otherwise: the registry takes them from the dataset itself)."""
    excluded = trained.get("exclude_columns") or []
    if not excluded:
        return None
    dataset = session.get(DatasetVersion, trained["dataset_version_id"])
    if dataset is None:
        raise StageFailed(f"dataset version {trained['dataset_version_id']} no longer exists")
    inputs = signatures.from_schema(
        dataset.schema["columns"], exclude=[trained["target"], *excluded]
    )
    return SignatureInput.model_validate({"inputs": inputs})


def register(ctx: JobContext, stage: StageInput, control: Control, workdir: Path) -> StageResult:
    trained = _trained(stage)
    name, alias = stage.params["model"], stage.params.get("alias")
    principal = system_principal(stage)
    evaluated = [o for n, o in stage.upstream.items() if stage.upstream_types[n] == "evaluate"]
    with ctx.transaction() as session:
        if session.scalar(select(RegisteredModel.id).where(RegisteredModel.name == name)) is None:
            registry.create_model(session, ModelCreate(name=name))
        metrics = {**trained.get("metrics", {}), **(evaluated[0]["metrics"] if evaluated else {})}
        try:
            version = registry.create_version_from_run(
                session,
                ctx.artifacts,
                name,
                VersionCreate(
                    run_id=trained["run_id"],
                    artifact_path=trained["artifact_path"],
                    dataset_version_id=trained["dataset_version_id"],
                    target=trained["target"],
                    signature=_signature_without(session, trained),
                    metrics=metrics,
                    description=f"pipeline {stage.pipeline} run {stage.run_id}",
                    parent_version=trained.get("parent_version"),
                ),
                by=principal,
            )
            registry_jobs.finalize_version(session, ctx, version.id)
        except AppError as exc:
            raise StageFailed(exc.message) from exc
        if version.status != VersionStatus.ready:
            raise StageFailed(f"version {version.version} failed: {version.status_message}")
        if alias:
            registry.set_alias(session, name, alias, version.version, by=principal)
        outputs = {
            "model": name,
            "version": version.version,
            "version_id": version.id,
            "alias": alias,
        }
    log(ctx, stage, f"registered {name} v{outputs['version']}")
    return StageResult("succeeded", outputs)


def package(ctx: JobContext, stage: StageInput, control: Control, workdir: Path) -> StageResult:
    registered = [o for n, o in stage.upstream.items() if stage.upstream_types[n] == "register"]
    if not registered:
        raise StageFailed("package needs an upstream register task")
    with ctx.transaction() as session:
        model = registry.get_model_or_raise(session, registered[0]["model"])
        version = registry.get_version_or_raise(session, model, str(registered[0]["version"]))
        packaging.request_package(
            session, model, version, rebuild=True, actor=system_principal(stage).name
        )
        packaging.build(session, ctx, model, version)
        outputs = {"model": model.name, "version": version.version, **(version.package or {})}
        failed = version.package_status is not None and version.package_status.value == "failed"
    log(
        ctx,
        stage,
        f"packaged {outputs['model']} v{outputs['version']}: image {outputs['image']['status']}",
    )
    if failed:
        return StageResult("failed", outputs, f"image step failed: {outputs['image'].get('error')}")
    return StageResult("succeeded", outputs)


def deploy(ctx: JobContext, stage: StageInput, control: Control, workdir: Path) -> StageResult:
    """Serve the registered version in staging: a new deployment the first time, then either
    in place (direct) or as a canary by the deployment's rollout policy."""
    registered = [o for n, o in stage.upstream.items() if stage.upstream_types[n] == "register"]
    if not registered:
        raise StageFailed("deploy needs an upstream register task")
    name, strategy = stage.params["deployment"], stage.params.get("strategy", "direct")
    ref = f"{registered[0]['model']}/{registered[0]['version']}"
    variant = f"v{registered[0]['version']}"
    principal = system_principal(stage)
    rollout_id = None
    with ctx.transaction() as session:
        existing = session.scalar(select(Deployment).where(Deployment.name == name))
        try:
            if existing is None:
                deployments.create(
                    session,
                    DeploymentCreate(name=name, variants=[VariantSpec(name=variant, model=ref)]),
                    by=principal,
                )
                strategy = "direct"
            elif existing.environment != Environment.staging:
                raise StageFailed(
                    f"deployment {name!r} is {existing.environment.value}; pipelines deploy to "
                    "staging only"
                )
            elif strategy == "canary":
                rollout_id = rollouts.promote(
                    session, name, PromoteRequest(model=ref, variant=variant), by=principal
                ).id
            else:
                deployments.update(
                    session,
                    name,
                    DeploymentUpdate(variants=[VariantSpec(name=variant, model=ref)]),
                    by=principal,
                )
        except AppError as exc:
            raise StageFailed(f"deploy to {name!r}: {exc.message}") from exc
    log(ctx, stage, f"deployed {ref} to {name} ({strategy})")
    outputs = {"deployment": name, "model": ref, "strategy": strategy, "rollout_id": rollout_id}
    return StageResult("succeeded", outputs)


def python(ctx: JobContext, stage: StageInput, control: Control, workdir: Path) -> StageResult:
    source, commit = checkout_source(ctx, stage, workdir)
    if source is None:
        raise StageFailed(
            "python tasks run a function from the source repository; this run has none"
        )
    request = {
        "stage": "python",
        "workdir": str(workdir),
        "source_dir": str(source),
        "function": stage.params["function"],
        "args": stage.params.get("args", {}),
        "memory_limit_mb": stage.memory_limit_mb,
    }
    result = run_runner(ctx, stage, control, request, workdir)
    return StageResult("succeeded", {"return": result.get("return"), "commit": commit})
