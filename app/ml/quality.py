"""How good the predictions were once labels arrived, and how fairly they treated groups.

Pure functions over plain lists: the monitoring service joins prediction logs with feedback
and hands the pairs here."""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn import metrics as skm


def _finite(value: float) -> float | None:
    return round(float(value), 6) if math.isfinite(value) else None


def classification(
    labels: Sequence[Any],
    predictions: Sequence[Any],
    probabilities: Sequence[Sequence[float]] | None,
    classes: Sequence[Any],
) -> dict[str, float | None]:
    """Binary metrics are for the positive class (the second of `classes`); with more classes
    they are macro averages. ROC AUC needs probabilities and both classes present."""
    y = [str(v) for v in labels]
    p = [str(v) for v in predictions]
    names = [str(c) for c in classes]
    binary = len(names) == 2
    options: dict[str, Any] = (
        {"average": "binary", "pos_label": names[1]} if binary else {"average": "macro"}
    )
    result: dict[str, float | None] = {
        "accuracy": _finite(skm.accuracy_score(y, p)),
        "precision": _finite(skm.precision_score(y, p, zero_division=0, **options)),
        "recall": _finite(skm.recall_score(y, p, zero_division=0, **options)),
        "f1": _finite(skm.f1_score(y, p, zero_division=0, **options)),
        "roc_auc": None,
    }
    if probabilities is not None and len(set(y)) > 1 and set(y) <= set(names):
        scores = np.asarray(probabilities, dtype=float)
        if binary:
            result["roc_auc"] = _finite(skm.roc_auc_score([v == names[1] for v in y], scores[:, 1]))
        elif len(set(y)) == len(names):
            result["roc_auc"] = _finite(
                skm.roc_auc_score(y, scores, multi_class="ovr", labels=names)
            )
    return result


def regression(labels: Sequence[float], predictions: Sequence[float]) -> dict[str, float | None]:
    y = np.asarray(labels, dtype=float)
    p = np.asarray(predictions, dtype=float)
    return {
        "rmse": _finite(math.sqrt(skm.mean_squared_error(y, p))),
        "mae": _finite(skm.mean_absolute_error(y, p)),
        "r2": _finite(skm.r2_score(y, p)) if len(y) > 1 else None,
    }


@dataclass(frozen=True)
class GroupRates:
    group: str
    count: int
    labelled: int
    selection_rate: float | None
    tpr: float | None
    fpr: float | None


def _rate(hits: int, total: int) -> float | None:
    return round(hits / total, 6) if total else None


def fairness(
    groups: Sequence[Any],
    predictions: Sequence[Any],
    labels: Sequence[Any | None],
    positive: Any,
    min_group_size: int = 30,
) -> dict[str, Any]:
    """Selection rate per group (all predictions), TPR/FPR per group (labelled ones); parity
    and equalized odds over the groups large enough to judge. No verdict below the minimum:
    a handful of rows says nothing about a group."""
    positive = str(positive)
    table: dict[str, list[tuple[bool, bool | None]]] = {}
    for group, prediction, label in zip(groups, predictions, labels, strict=True):
        selected = str(prediction) == positive
        truth = None if label is None else str(label) == positive
        table.setdefault(str(group), []).append((selected, truth))
    rates = []
    for group, rows in sorted(table.items()):
        labelled = [(s, t) for s, t in rows if t is not None]
        actual_pos = [s for s, t in labelled if t]
        actual_neg = [s for s, t in labelled if not t]
        rates.append(
            GroupRates(
                group=group,
                count=len(rows),
                labelled=len(labelled),
                selection_rate=_rate(sum(s for s, _ in rows), len(rows)),
                tpr=_rate(sum(actual_pos), len(actual_pos)),
                fpr=_rate(sum(actual_neg), len(actual_neg)),
            )
        )
    judged = [r for r in rates if r.count >= min_group_size and r.selection_rate is not None]
    result: dict[str, Any] = {
        "groups": [vars(r) for r in rates],
        "min_group_size": min_group_size,
        "judged_groups": [r.group for r in judged],
        "demographic_parity_difference": None,
        "demographic_parity_ratio": None,
        "equalized_odds_difference": None,
        "four_fifths_rule_passed": None,
        "verdict": "insufficient_data",
    }
    if len(judged) < 2:
        return result
    selection = [r.selection_rate for r in judged if r.selection_rate is not None]
    high, low = max(selection), min(selection)
    ratio = low / high if high > 0 else 1.0
    result["demographic_parity_difference"] = round(high - low, 6)
    result["demographic_parity_ratio"] = round(ratio, 6)
    result["four_fifths_rule_passed"] = ratio >= 0.8
    odds = [r for r in judged if r.tpr is not None and r.fpr is not None]
    if len(odds) >= 2:
        tprs = [r.tpr for r in odds if r.tpr is not None]
        fprs = [r.fpr for r in odds if r.fpr is not None]
        result["equalized_odds_difference"] = round(
            max(max(tprs) - min(tprs), max(fprs) - min(fprs)), 6
        )
    result["verdict"] = "passed" if ratio >= 0.8 else "failed"
    return result
