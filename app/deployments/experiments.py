"""A/B tests between live variants, judged on feedback with an always-valid sequential test,
so a dashboard may look at the result every minute without inventing a winner."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.service import Principal
from app.core.db import utcnow
from app.core.errors import Conflict, NotFound, Unprocessable
from app.core.pagination import PageParams, keyset_page
from app.deployments import service
from app.deployments.models import ABTest, Deployment, VariantMode
from app.deployments.schemas import ArmRead, ExperimentCreate, ExperimentRead
from app.ml import sequential
from app.monitoring import repository


def create(session: Session, name: str, body: ExperimentCreate, *, by: Principal) -> ABTest:
    deployment = service.get_or_raise(session, name, for_update=True)
    service.require_deployer(deployment.environment, by)
    live = {v.name for v in deployment.variants if v.mode == VariantMode.live and v.weight > 0}
    for role, variant in (("control", body.control), ("treatment", body.treatment)):
        if variant not in live:
            raise Unprocessable(
                f"{role}: {variant!r} is not a live variant with traffic in {name!r}; "
                f"live variants: {sorted(live)}",
                details={"loc": [role]},
            )
    if running(session, deployment) is not None:
        raise Conflict(f"{name!r} already runs an A/B test; stop it first")
    if body.unit_key is not None and body.unit_key != deployment.unit_key:
        deployment.unit_key = body.unit_key
        deployment.generation += 1
    test = ABTest(
        deployment_id=deployment.id,
        name=body.name,
        control=body.control,
        treatment=body.treatment,
        metric=body.metric,
        higher_is_better=body.higher_is_better,
        min_samples=body.min_samples,
        alpha=body.alpha,
        created_by=by.name,
    )
    session.add(test)
    session.flush()
    return test


def running(session: Session, deployment: Deployment) -> ABTest | None:
    return session.scalar(
        select(ABTest).where(ABTest.deployment_id == deployment.id, ABTest.stopped_at.is_(None))
    )


def get_or_raise(session: Session, deployment: Deployment, test_id: int) -> ABTest:
    test = session.get(ABTest, test_id)
    if test is None or test.deployment_id != deployment.id:
        raise NotFound(f"experiment {test_id} of {deployment.name!r} does not exist")
    return test


def list_tests(
    session: Session, deployment: Deployment, page: PageParams
) -> tuple[Sequence[ABTest], str | None]:
    stmt = select(ABTest).where(ABTest.deployment_id == deployment.id)
    return keyset_page(session, stmt, ABTest.id, page)


def stop(session: Session, deployment: Deployment, test_id: int) -> ABTest:
    test = get_or_raise(session, deployment, test_id)
    if test.stopped_at is None:
        test.stopped_at = utcnow()
    return test


def observations(session: Session, deployment: str, test: ABTest, variant: str) -> list[float]:
    """One value per labelled row (accuracy) or per rewarded request (reward)."""
    values: list[float] = []
    for predictions, labels, reward in repository.labelled(
        session, deployment, variant, test.started_at, test.stopped_at
    ):
        if test.metric == "reward":
            if reward is not None:
                values.append(float(reward))
        elif labels is not None and len(labels) == len(predictions):
            values.extend(float(_same(p, y)) for p, y in zip(predictions, labels, strict=True))
    return values


def _same(prediction: Any, label: Any) -> bool:
    """Labels arrive as JSON: 1, "1" and True all mean the class 1 the model predicted."""
    return prediction == label or str(prediction) == str(label)


def result(session: Session, deployment: Deployment, test: ABTest) -> dict[str, Any]:
    control = observations(session, deployment.name, test, test.control)
    treatment = observations(session, deployment.name, test, test.treatment)
    arms = [_arm(test.control, control, test.alpha), _arm(test.treatment, treatment, test.alpha)]
    base = read(test, deployment.name).model_dump()
    if len(control) < 2 or len(treatment) < 2:
        return {
            **base,
            "arms": arms,
            "difference": None,
            "ci_low": None,
            "ci_high": None,
            "p_value": None,
            "verdict": "insufficient_samples",
            "winner": None,
            "reason": (
                f"{len(control)} control and {len(treatment)} treatment observations so far; "
                f"the test needs {test.min_samples} per variant"
            ),
        }
    compared = sequential.compare(
        control,
        treatment,
        alpha=test.alpha,
        min_samples=test.min_samples,
        higher_is_better=test.higher_is_better,
    )
    winner = {"treatment_better": test.treatment, "control_better": test.control}
    return {
        **base,
        "arms": arms,
        "difference": compared.difference,
        "ci_low": compared.ci_low,
        "ci_high": compared.ci_high,
        "p_value": compared.p_value,
        "verdict": compared.verdict,
        "winner": winner.get(compared.verdict),
        "reason": compared.reason,
    }


def read(test: ABTest, deployment: str) -> ExperimentRead:
    return ExperimentRead(
        id=test.id,
        deployment=deployment,
        name=test.name,
        control=test.control,
        treatment=test.treatment,
        metric=test.metric,
        higher_is_better=test.higher_is_better,
        min_samples=test.min_samples,
        alpha=test.alpha,
        started_at=test.started_at,
        stopped_at=test.stopped_at,
        created_by=test.created_by,
    )


def _arm(variant: str, values: list[float], alpha: float) -> ArmRead:
    if not values:
        return ArmRead(variant=variant, samples=0, mean=None, ci_low=None, ci_high=None)
    summary = sequential.summarize(values, alpha=alpha)
    finite = summary.ci_low > float("-inf")
    return ArmRead(
        variant=variant,
        samples=summary.n,
        mean=summary.mean,
        ci_low=summary.ci_low if finite else None,
        ci_high=summary.ci_high if finite else None,
    )
