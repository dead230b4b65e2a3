"""What each task type does. Heavy work runs in a subprocess (`app.pipelines.runner`) with a
timeout and a memory limit, its output streamed to the task's log; this side records what it
produced through the domains' services (tracking, registry) in short units of work."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.service import Principal
from app.core.db import utcnow
from app.core.errors import NotFound
from app.core.jobs import JobContext
from app.core.processes import die_with_parent
from app.core.secrets import decrypt
from app.core.security import Role
from app.datasets import service as datasets
from app.datasets.models import DatasetVersion
from app.pipelines.models import PipelineRun, TaskRun, TaskStatus
from app.pipelines.service import log_path
from app.pipelines.spec import ALLOWED_ESTIMATORS, PipelineSpec, run_overrides
from app.sources import gitops
from app.sources.models import GitSource

STOP_GRACE_SECONDS = 3


@dataclass(frozen=True)
class StageInput:
    run_id: int
    task_run_id: int
    pipeline: str
    task_name: str
    task_type: str
    params: dict[str, Any]
    timeout: int
    memory_limit_mb: int | None
    repo_url: str | None
    git_source_id: int | None
    branch: str | None
    commit: str | None
    inputs: dict[str, Any]
    upstream: dict[str, dict[str, Any]]
    upstream_types: dict[str, str]
    register_model: str | None


@dataclass
class StageResult:
    status: str  # succeeded | rejected | failed | cancelled
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class StageFailed(Exception):
    """A user-facing failure: the message is the task's error."""


class Control:
    """Heartbeats for the task and tells the stage when to stop (run cancelled, or the task was
    taken over by another worker because this one looked dead)."""

    def __init__(self, ctx: JobContext, task_run_id: int, attempt: int) -> None:
        self.ctx = ctx
        self.task_run_id = task_run_id
        self.attempt = attempt
        self.last = 0.0
        self.stop_reason: str | None = None

    def should_stop(self) -> bool:
        if time.monotonic() - self.last < self.ctx.settings.task_heartbeat_seconds:
            return self.stop_reason is not None
        self.last = time.monotonic()
        with self.ctx.transaction() as session:
            task = session.get(TaskRun, self.task_run_id)
            run = session.get(PipelineRun, task.pipeline_run_id) if task else None
            if task is None or run is None or task.attempts != self.attempt:
                self.stop_reason = "superseded"
            elif run.cancel_requested:
                self.stop_reason = "cancelled"
            elif task.status == TaskStatus.running:
                task.heartbeat_at = utcnow()
        return self.stop_reason is not None


def stage_input(session: Session, run: PipelineRun, task: TaskRun) -> StageInput:
    spec = PipelineSpec.model_validate(run.spec)
    by_name = {t.name: t for t in spec.tasks}
    task_spec = by_name[task.name]
    tasks = {
        t.name: t for t in session.scalars(select(TaskRun).where(TaskRun.pipeline_run_id == run.id))
    }
    ancestors = _ancestors(spec, task.name)
    register = next((t.params.get("model") for t in spec.tasks if t.type == "register"), None)
    overrides = run_overrides(task.type, task_spec.params, run.params)
    return StageInput(
        run_id=run.id,
        task_run_id=task.id,
        pipeline=run.pipeline.name,
        task_name=task.name,
        task_type=task.type,
        params={**task_spec.params, **overrides},
        timeout=task_spec.timeout,
        memory_limit_mb=task_spec.memory_limit_mb,
        repo_url=run.repo_url,
        git_source_id=run.git_source_id,
        branch=run.branch,
        commit=run.commit,
        inputs=task.inputs,
        upstream={name: tasks[name].outputs for name in ancestors},
        upstream_types={name: by_name[name].type for name in ancestors},
        register_model=register,
    )


def _ancestors(spec: PipelineSpec, name: str) -> list[str]:
    by_name = {t.name: t for t in spec.tasks}
    seen: list[str] = []
    stack = list(by_name[name].depends_on)
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.append(current)
            stack.extend(by_name[current].depends_on)
    return seen


def execute(ctx: JobContext, stage: StageInput, control: Control) -> StageResult:
    from app.pipelines import stage_impl  # the stage bodies import the domains they write to

    handlers = {
        "train": stage_impl.train,
        "evaluate": stage_impl.evaluate,
        "register": stage_impl.register,
        "package": stage_impl.package,
        "deploy": stage_impl.deploy,
        "python": stage_impl.python,
    }
    workdir = Path(
        tempfile.mkdtemp(prefix=f"run{stage.run_id}-{stage.task_name}-", dir=_work_root(ctx))
    )
    try:
        return handlers[stage.task_type](ctx, stage, control, workdir)
    except StageFailed as exc:
        return StageResult("failed", {}, str(exc))
    except StageCancelled as exc:
        return StageResult("cancelled", {}, str(exc))
    finally:
        _remove_tree(workdir)


class StageCancelled(Exception):
    pass


def _work_root(ctx: JobContext) -> Path:
    root = ctx.settings.home.resolve() / "work"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def system_principal(stage: StageInput) -> Principal:
    return Principal(token_id=0, name=f"pipeline:{stage.pipeline}", role=Role.admin)


def log(ctx: JobContext, stage: StageInput, line: str) -> None:
    path = log_path(ctx.artifacts, stage.run_id, stage.task_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(f"[{utcnow().isoformat(timespec='seconds')}] {line}\n")


def _git_credentials(ctx: JobContext, stage: StageInput) -> str | None:
    if stage.git_source_id is None:
        return None
    with ctx.transaction() as session:
        source = session.get(GitSource, stage.git_source_id)
        encrypted = source.credentials_encrypted if source else None
    return decrypt(ctx.settings, encrypted) if encrypted else None


def checkout_source(
    ctx: JobContext, stage: StageInput, workdir: Path
) -> tuple[Path | None, str | None]:
    """The pushed commit as a plain directory (None when the run has no repository)."""
    if not stage.repo_url:
        return None, stage.commit
    credentials = _git_credentials(ctx, stage)
    cache = ctx.settings.resolved_git_cache
    mirror = gitops.ensure_mirror(stage.repo_url, cache, credentials=credentials)
    commit = stage.commit or gitops.resolve_ref(mirror, stage.branch or "HEAD")
    log(ctx, stage, f"checking out {gitops.redact(stage.repo_url)} at {commit}")
    source = gitops.checkout(mirror, commit, workdir / "src", credentials=credentials)
    return source, commit


def repo_config(source: Path | None) -> dict[str, Any]:
    if source is None or not (source / "flywheel.yaml").exists():
        return {}
    try:
        config = yaml.safe_load((source / "flywheel.yaml").read_text()) or {}
    except yaml.YAMLError as exc:
        raise StageFailed(f"flywheel.yaml is not valid YAML: {exc}") from exc
    if not isinstance(config, dict):
        raise StageFailed("flywheel.yaml must be a mapping with a `train:` section")
    return config


def dataset_file(
    ctx: JobContext, session: Session, version_id: int | None, *, named: str | None = None
) -> DatasetVersion:
    """The version pinned when the task was queued; `named` is the task's params.dataset, to
    say why none was pinned."""
    if version_id is None and named:
        try:
            datasets.latest_version_or_raise(session, named)
        except NotFound as exc:
            raise StageFailed(exc.message) from None
        raise StageFailed(
            f"dataset {named!r} had no version when this task was queued; run the pipeline again"
        )
    if version_id is None:
        raise StageFailed(
            "no training data: set params.dataset, or trigger the pipeline from a data source"
        )
    version = session.get(DatasetVersion, version_id)
    if version is None:
        raise StageFailed(f"dataset version {version_id} no longer exists")
    return version


def run_runner(
    ctx: JobContext, stage: StageInput, control: Control, request: dict[str, Any], workdir: Path
) -> dict[str, Any]:
    """Run one stage in a fresh interpreter; stream its output to the task log."""
    request_path = workdir / "request.json"
    request_path.write_text(json.dumps(request))
    path = log_path(ctx.artifacts, stage.run_id, stage.task_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + stage.timeout
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    env["PYTHONUNBUFFERED"] = "1"
    with path.open("ab") as out:
        process = subprocess.Popen(  # noqa: S603 - our own runner, argv list
            [sys.executable, "-m", "app.pipelines.runner", str(request_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent,  # only prctl: no locks taken between fork and exec
        )
        while process.poll() is None:
            if time.monotonic() > deadline:
                _stop(process)
                raise StageFailed(f"timed out after {stage.timeout} s")
            if control.should_stop():
                _stop(process)
                raise StageCancelled(f"stopped: {control.stop_reason}")
            time.sleep(0.2)
    result_path = workdir / "result.json"
    result: dict[str, Any] = json.loads(result_path.read_text()) if result_path.exists() else {}
    if process.returncode == 2:
        raise StageFailed(str(result.get("error", "the stage reported an error")))
    if process.returncode != 0:
        raise StageFailed(f"the stage crashed (exit {process.returncode}); see the task log")
    return result


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the whole process group: training code may have started children of its own."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


ALLOWED = sorted(ALLOWED_ESTIMATORS)
