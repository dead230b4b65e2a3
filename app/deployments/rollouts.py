"""Promotion as a state machine: a Rollout walks the candidate through its traffic steps,
bakes at each, and judges guardrails against the baseline on the same window. A breach rolls
back by itself; every check that changes something (and the first hold of a step) is
recorded with its numbers.

The controller is `advance`, run by beat every few seconds; it only reads what the gateway
logged and rewrites the desired state, which the gateway then converges to."""

from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from app.auth.service import Principal
from app.core.db import utcnow
from app.core.errors import Conflict, NotFound, Unprocessable
from app.core.pagination import PageParams, keyset_page
from app.core.security import Role
from app.deployments import service
from app.deployments.models import (
    Deployment,
    Replica,
    Rollout,
    RolloutDecision,
    RolloutState,
    Variant,
    VariantMode,
)
from app.deployments.schemas import Guardrails, PromoteRequest, RolloutPolicy
from app.events import service as events
from app.events.types import declared
from app.explain.models import FeatureImportance, ImportanceStatus
from app.ml.explain import ndcg
from app.monitoring import repository
from app.registry import service as registry
from app.registry.models import ModelVersion

RolloutAction = Literal["start", "hold", "advance", "complete", "rollback"]
"""A rollout decision; each is emitted as `rollout.<action>`."""


def steps_for(policy: RolloutPolicy) -> list[int]:
    if policy.strategy == "all_at_once":
        return [100]
    if policy.strategy == "canary":
        return [policy.canary_percent, 100]
    return [*policy.linear_steps, 100]


def promote(session: Session, name: str, body: PromoteRequest, *, by: Principal) -> Rollout:
    deployment = service.get_or_raise(session, name, for_update=True)
    service.require_deployer(deployment.environment, by)
    if body.set_alias is not None:
        registry.check_alias(body.set_alias, by)
    if running(session, deployment) is not None:
        raise Conflict(f"a rollout of {name!r} is already running; wait for it or roll it back")
    live = [v for v in deployment.variants if v.mode == VariantMode.live and v.weight > 0]
    if len(live) != 1:
        raise Conflict(
            f"promotion needs one live variant to replace; {name!r} splits traffic between "
            f"{[v.name for v in live]}: end the A/B test first (PATCH the variants)"
        )
    baseline = live[0]
    candidate = service.resolve_variant(session, body.model, ["model"])
    version = session.get(ModelVersion, candidate.model_version_id)
    assert version is not None
    if candidate.model_version_id == baseline.model_version_id:
        raise Conflict(f"{body.model} is what variant {baseline.name!r} already serves")
    candidate.name = body.variant or f"v{version.version}"
    if any(v.name == candidate.name for v in deployment.variants):
        raise Conflict(
            f"variant {candidate.name!r} already exists in {name!r}; name the new one (`variant`)"
        )
    policy = RolloutPolicy.model_validate(deployment.rollout)
    if body.strategy is not None:
        policy.strategy = body.strategy
    steps = steps_for(policy)
    rollout = Rollout(
        deployment_id=deployment.id,
        strategy=policy.strategy,
        baseline_variant=baseline.name,
        baseline_ref=baseline.model_ref,
        baseline_version_id=baseline.model_version_id,
        candidate_variant=candidate.name,
        candidate_ref=body.model,
        candidate_version_id=candidate.model_version_id,
        steps=steps,
        bake_seconds=policy.bake_seconds if body.bake_seconds is None else body.bake_seconds,
        guardrails=policy.guardrails.model_dump(mode="json"),
        set_alias=body.set_alias,
        created_by=by.name,
    )
    session.add(rollout)
    candidate.mirror = policy.guardrails.max_disagreement is not None
    deployment.variants.append(candidate)
    session.flush()
    _decide(session, deployment, rollout, "start", f"rolling out {body.model}", {"steps": steps})
    if steps[0] == 100:
        _complete(session, deployment, rollout, "all at once: no bake")
    else:
        _set_traffic(deployment, rollout, steps[0])
    return rollout


def rollback(session: Session, name: str, reason: str, *, by: Principal) -> Rollout:
    """Stops the running rollout, or undoes the last completed one by serving its baseline
    version again."""
    deployment = service.get_or_raise(session, name, for_update=True)
    service.require_deployer(deployment.environment, by)
    rollout = running(session, deployment)
    if rollout is not None:
        _roll_back(session, deployment, rollout, f"{reason} ({by.name})", {})
        return rollout
    last = session.scalar(
        select(Rollout)
        .where(Rollout.deployment_id == deployment.id, Rollout.state == RolloutState.completed)
        .order_by(Rollout.id.desc())
        .limit(1)
    )
    if last is None:
        raise Conflict(f"{name!r} has no rollout to roll back")
    current = next((v for v in deployment.variants if v.name == last.candidate_variant), None)
    if current is None or current.model_version_id != last.candidate_version_id:
        raise Conflict(
            f"{name!r} changed since rollout {last.id} completed; PATCH its variants instead"
        )
    current.name, current.model_ref = last.baseline_variant, last.baseline_ref
    current.model_version_id = last.baseline_version_id
    last.state = RolloutState.rolled_back
    last.reason = f"{reason} ({by.name}) after it had completed"
    _decide(session, deployment, last, "rollback", last.reason, {})
    _bump(deployment)
    return last


def advance(session: Session, rollout: Rollout, now: datetime | None = None) -> None:
    """One controller check: breach → roll back; baked and healthy → next step; else hold."""
    now = now or utcnow()
    deployment = session.get(Deployment, rollout.deployment_id, with_for_update=True)
    if deployment is None or rollout.state != RolloutState.running:
        return
    session.refresh(deployment, attribute_names=["variants"])
    numbers, breach = judge(session, deployment.name, rollout)
    if breach is not None:
        _roll_back(session, deployment, rollout, breach, numbers)
        return
    baked = (now - rollout.step_started_at).total_seconds() >= rollout.bake_seconds
    enough = numbers["candidate"]["requests"] >= rollout.guardrails["min_requests"]
    if not (baked and enough):
        if baked:
            waiting = (
                f"baked {rollout.bake_seconds:g}s but the candidate has "
                f"{numbers['candidate']['requests']} of {rollout.guardrails['min_requests']} "
                "requests needed for a verdict; holding"
            )
            last = rollout.decisions[-1] if rollout.decisions else None
            if last is None or last.action != "hold" or last.step_index != rollout.step_index:
                _decide(session, deployment, rollout, "hold", waiting, numbers)
        return
    next_index = rollout.step_index + 1
    if rollout.steps[next_index] == 100:
        _complete(session, deployment, rollout, "guardrails held through the last bake", numbers)
        return
    rollout.step_index = next_index
    rollout.step_started_at = now
    _set_traffic(deployment, rollout, rollout.steps[next_index])
    percent = rollout.steps[next_index]
    _decide(session, deployment, rollout, "advance", f"guardrails held; {percent}%", numbers)


def _warm_since(session: Session, rollout: Rollout) -> datetime | None:
    """Latency is compared from when the candidate's first replica was ready: the requests
    the gateway held while it started are its cold start, reported as such."""
    ready = session.scalar(
        select(func.min(Replica.ready_at)).where(
            Replica.deployment_id == rollout.deployment_id,
            Replica.variant == rollout.candidate_variant,
            Replica.ready_at.is_not(None),
        )
    )
    return max(rollout.step_started_at, ready) if ready else None


def judge(session: Session, deployment: str, rollout: Rollout) -> tuple[dict[str, Any], str | None]:
    """Candidate vs baseline since the step began: error rate, p99 and disagreement."""
    guard = Guardrails.model_validate(rollout.guardrails)
    since = rollout.step_started_at
    warm = _warm_since(session, rollout)
    base = repository.variant_window(session, deployment, rollout.baseline_variant, since, warm)
    cand = repository.variant_window(session, deployment, rollout.candidate_variant, since, warm)
    if warm is None:  # no candidate replica is ready yet: no latency verdict either
        cand = replace(cand, p99_ms=None)
    numbers: dict[str, Any] = {
        "since": since.isoformat(),
        "latency_since": warm.isoformat() if warm else None,
        "baseline": {**asdict(base), "error_rate": round(base.error_rate, 5)},
        "candidate": {**asdict(cand), "error_rate": round(cand.error_rate, 5)},
        "guardrails": guard.model_dump(mode="json"),
    }
    if guard.max_disagreement is not None:
        pairs, differing = repository.disagreement(
            session, deployment, rollout.baseline_variant, rollout.candidate_variant, since
        )
        share = differing / pairs if pairs else 0.0
        numbers["disagreement"] = {"pairs": pairs, "differing": differing, "share": round(share, 5)}
        if pairs >= guard.min_requests and share > guard.max_disagreement:
            return numbers, (
                f"disagreement {share:.1%} on {pairs} mirrored requests exceeds "
                f"{guard.max_disagreement:.1%}"
            )
    if guard.min_attribution_ndcg is not None:
        agreement = attribution_agreement(
            session, rollout.baseline_version_id, rollout.candidate_version_id
        )
        numbers["attribution_ndcg"] = agreement
        if agreement is not None and agreement < guard.min_attribution_ndcg:
            return numbers, (
                f"the candidate ranks features differently: attribution nDCG {agreement:.3f} "
                f"below {guard.min_attribution_ndcg:g}"
            )
    if cand.requests < guard.min_requests:
        return numbers, None
    if cand.error_rate > base.error_rate + guard.max_error_rate:
        return numbers, (
            f"error rate {cand.error_rate:.2%} on {cand.requests} requests exceeds the "
            f"baseline's {base.error_rate:.2%} by more than {guard.max_error_rate:.2%}"
        )
    if (
        cand.p99_ms is not None
        and base.p99_ms is not None
        and base.requests >= guard.min_requests
        and cand.p99_ms > base.p99_ms * guard.max_p99_latency_ratio
        and cand.p99_ms - base.p99_ms > guard.p99_slack_ms
    ):
        return numbers, (
            f"p99 {cand.p99_ms:.1f} ms exceeds {guard.max_p99_latency_ratio:g} times the "
            f"baseline's {base.p99_ms:.1f} ms"
        )
    return numbers, None


def attribution_agreement(session: Session, baseline_id: int, candidate_id: int) -> float | None:
    """nDCG of the candidate's importance ranking against the baseline's (both on their
    reference data); None until both have been computed."""
    found = {}
    for version_id in (baseline_id, candidate_id):
        found[version_id] = session.scalar(
            select(FeatureImportance.features)
            .where(
                FeatureImportance.model_version_id == version_id,
                FeatureImportance.source == "reference",
                FeatureImportance.status == ImportanceStatus.ready,
            )
            .order_by(FeatureImportance.computed_at.desc())
            .limit(1)
        )
    baseline, candidate = found[baseline_id], found[candidate_id]
    if not baseline or not candidate:
        return None
    return round(
        ndcg(
            {f["feature"]: f["mean_abs_shap"] for f in baseline},
            {f["feature"]: f["mean_abs_shap"] for f in candidate},
        ),
        6,
    )


def running(session: Session, deployment: Deployment) -> Rollout | None:
    return session.scalar(
        select(Rollout).where(
            Rollout.deployment_id == deployment.id, Rollout.state == RolloutState.running
        )
    )


def running_ids(session: Session) -> Sequence[int]:
    return session.scalars(select(Rollout.id).where(Rollout.state == RolloutState.running)).all()


def get_or_raise(session: Session, deployment: Deployment, rollout_id: int) -> Rollout:
    rollout = session.scalar(
        select(Rollout)
        .where(Rollout.id == rollout_id, Rollout.deployment_id == deployment.id)
        .options(selectinload(Rollout.decisions))
    )
    if rollout is None:
        raise NotFound(f"rollout {rollout_id} of {deployment.name!r} does not exist")
    return rollout


def list_rollouts(
    session: Session, deployment: Deployment, page: PageParams
) -> tuple[Sequence[Rollout], str | None]:
    stmt = (
        select(Rollout)
        .where(Rollout.deployment_id == deployment.id)
        .options(selectinload(Rollout.decisions))
    )
    return keyset_page(session, stmt, Rollout.id, page)


# -- transitions ------------------------------------------------------------------------------


def _variant(deployment: Deployment, name: str) -> Variant:
    found = next((v for v in deployment.variants if v.name == name), None)
    if found is None:
        raise Unprocessable(f"variant {name!r} is no longer part of {deployment.name!r}")
    return found


def _set_traffic(deployment: Deployment, rollout: Rollout, percent: int) -> None:
    _variant(deployment, rollout.candidate_variant).weight = percent
    _variant(deployment, rollout.baseline_variant).weight = 100 - percent
    _bump(deployment)


def _complete(
    session: Session,
    deployment: Deployment,
    rollout: Rollout,
    reason: str,
    numbers: dict[str, Any] | None = None,
) -> None:
    candidate = _variant(deployment, rollout.candidate_variant)
    candidate.weight, candidate.mirror = 100, False
    deployment.variants.remove(_variant(deployment, rollout.baseline_variant))
    rollout.state, rollout.finished_at, rollout.reason = RolloutState.completed, utcnow(), reason
    rollout.step_index = len(rollout.steps) - 1
    _bump(deployment)
    session.flush()
    if rollout.set_alias is not None:
        version = session.get(ModelVersion, rollout.candidate_version_id)
        assert version is not None
        model = registry.model_of(session, version)
        # The promoter's right to move this alias was checked when the rollout began.
        by = Principal(token_id=0, name=f"rollout {rollout.id}", role=Role.deployer)
        registry.set_alias(session, model.name, rollout.set_alias, version.version, by=by)
    _decide(session, deployment, rollout, "complete", reason, numbers or {})


def _roll_back(
    session: Session, deployment: Deployment, rollout: Rollout, reason: str, numbers: dict[str, Any]
) -> None:
    baseline = _variant(deployment, rollout.baseline_variant)
    baseline.weight = 100
    deployment.variants.remove(_variant(deployment, rollout.candidate_variant))
    rollout.state, rollout.finished_at, rollout.reason = RolloutState.rolled_back, utcnow(), reason
    _bump(deployment)
    _decide(session, deployment, rollout, "rollback", reason, numbers)


def _bump(deployment: Deployment) -> None:
    deployment.generation += 1
    deployment.updated_at = utcnow()


def _decide(
    session: Session,
    deployment: Deployment,
    rollout: Rollout,
    action: RolloutAction,
    reason: str,
    numbers: dict[str, Any],
) -> None:
    percent = (
        rollout.steps[rollout.step_index]
        if rollout.state == RolloutState.running
        else (100 if rollout.state == RolloutState.completed else 0)
    )
    decision = RolloutDecision(
        step_index=rollout.step_index,
        percent=percent,
        action=action,
        reason=reason,
        numbers=numbers,
    )
    rollout.decisions.append(decision)
    session.flush()
    events.record(
        session,
        declared(f"rollout.{action}"),
        f"deployment:{deployment.name}",
        {
            "deployment": deployment.name,
            "rollout": rollout.id,
            "candidate": rollout.candidate_ref,
            "percent": percent,
            "reason": reason,
        },
        rollout.created_by,
    )
