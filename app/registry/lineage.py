"""A version's lineage as a graph: data -> run -> model version -> aliases (and deployments)."""

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.datasets.models import Dataset, DatasetVersion
from app.registry.models import ModelVersion, RegisteredModel
from app.registry.schemas import Lineage, LineageEdge, LineageNode
from app.tracking.models import Run, RunInput
from app.tracking.service import get_run_or_raise


def lineage(session: Session, model: RegisteredModel, version: ModelVersion) -> Lineage:
    nodes: dict[str, LineageNode] = {}
    edges: list[LineageEdge] = []
    version_id = f"model_version:{version.id}"
    nodes[version_id] = LineageNode(
        id=version_id,
        type="model_version",
        label=f"{model.name} v{version.version}",
        data={
            "model": model.name,
            "version": version.version,
            "status": version.status.value,
            "artifact_digest": version.artifact_digest,
            "metrics": version.metrics,
            "created_at": version.created_at.isoformat(),
        },
    )
    dataset_ids: dict[int, str] = {}
    if version.dataset_version_id is not None:
        dataset_ids[version.dataset_version_id] = "trained_on"
    if version.run_id is not None:
        run = get_run_or_raise(session, version.run_id)
        run_id = f"run:{run.id}"
        nodes[run_id] = _run_node(run)
        edges.append(LineageEdge(source=run_id, target=version_id, relation="produced"))
        inputs = session.scalars(select(RunInput).where(RunInput.run_id == run.id)).all()
        for item in inputs:
            dataset_ids.setdefault(item.dataset_version_id, item.context)
        for dataset_version_id, relation in dataset_ids.items():
            edges.append(
                LineageEdge(
                    source=f"dataset_version:{dataset_version_id}", target=run_id, relation=relation
                )
            )
    else:
        for dataset_version_id, relation in dataset_ids.items():
            edges.append(
                LineageEdge(
                    source=f"dataset_version:{dataset_version_id}",
                    target=version_id,
                    relation=relation,
                )
            )
    for node in _dataset_nodes(session, list(dataset_ids)):
        nodes[node.id] = node
    if version.parent_version_id is not None:
        parent = session.get(ModelVersion, version.parent_version_id)
        if parent is not None:
            parent_id = f"model_version:{parent.id}"
            nodes[parent_id] = LineageNode(
                id=parent_id,
                type="model_version",
                label=f"{model.name} v{parent.version}",
                data={
                    "model": model.name,
                    "version": parent.version,
                    "status": parent.status.value,
                },
            )
            edges.append(
                LineageEdge(source=parent_id, target=version_id, relation="warm_started_from")
            )
    for alias in model.aliases:
        if alias.version_id == version.id:
            alias_id = f"alias:{model.name}@{alias.alias}"
            nodes[alias_id] = LineageNode(
                id=alias_id,
                type="alias",
                label=f"@{alias.alias}",
                data={"updated_at": alias.updated_at.isoformat()},
            )
            edges.append(LineageEdge(source=alias_id, target=version_id, relation="points_to"))
    return Lineage(nodes=list(nodes.values()), edges=edges)


def _run_node(run: Run) -> LineageNode:
    return LineageNode(
        id=f"run:{run.id}",
        type="run",
        label=run.name or f"run {run.id}",
        data={
            "experiment_id": run.experiment_id,
            "status": run.status.value,
            "params": {p.key: p.value for p in run.params},
            "metrics": {m.key: m.value for m in run.latest_metrics},
            "code_version": run.code_version,
            "start_time": run.start_time.isoformat(),
            "duration_ms": run.duration_ms,
        },
    )


def _dataset_nodes(session: Session, ids: list[int]) -> list[LineageNode]:
    if not ids:
        return []
    rows = session.execute(
        select(DatasetVersion, Dataset.name).join(Dataset).where(DatasetVersion.id.in_(ids))
    ).all()
    return [
        LineageNode(
            id=f"dataset_version:{dv.id}",
            type="dataset_version",
            label=f"{name} v{dv.version}",
            data={"dataset": name, "version": dv.version, "digest": dv.digest, "rows": dv.rows},
        )
        for dv, name in rows
    ]
