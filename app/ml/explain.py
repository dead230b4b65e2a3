"""SHAP explanations of fitted scikit-learn models: pure functions on frames, no DB.

The explainer is chosen by model: exact Tree SHAP (path-dependent, no background needed) for
tree ensembles, the linear explainer for linear models, otherwise Kernel SHAP over a small
background sample with a budget of model evaluations. Pipelines are explained in terms of
their input columns: the attributions of encoded columns are summed back to the column they
came from, which keeps additivity (the sum over a group is the group's attribution).

Kernel SHAP rather than shap's permutation explainer: the latter compiles numba kernels on
its first call (~20 s per process here), which a request cannot wait for.
"""

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.base import is_classifier, is_regressor
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline

ExplainerKind = Literal["tree", "linear", "kernel"]
OutputSpace = Literal["probability", "log_odds", "margin", "raw"]

DEFAULT_MAX_EVALS = 256
KERNEL_BACKGROUND_ROWS = 50
KERNEL_SEED = 0
RELATIVE_TOLERANCE = 1e-6


class ExplainError(ValueError):
    """The model or the request cannot be explained; `code` names the reason for the caller."""

    def __init__(self, message: str, code: str = "unsupported_model") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class _Unmappable(Exception):
    """A pipeline step whose outputs cannot be traced back to single input columns."""


@dataclass(frozen=True)
class Explanation:
    """Arrays are (rows, features, outputs) and (rows, outputs); outputs are the classes (in
    `classes` order) or the single regression output."""

    explainer: ExplainerKind
    output_space: OutputSpace
    features: list[str]
    classes: list[Any] | None
    values: np.ndarray
    base_values: np.ndarray
    outputs: np.ndarray
    max_error: float
    tolerance: float
    additive: bool
    approximations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    max_evals: int | None = None
    background_rows: int | None = None

    @property
    def approximate(self) -> bool:
        return bool(self.approximations)


def _name(model: Any) -> str:
    if isinstance(model, Pipeline):
        return f"a Pipeline ending in {type(model.steps[-1][1]).__name__}"
    return type(model).__name__


def _dense(matrix: Any) -> np.ndarray:
    if hasattr(matrix, "toarray"):  # a scipy sparse matrix (one-hot encoders)
        return np.ascontiguousarray(matrix.toarray(), dtype=float)
    return np.ascontiguousarray(matrix, dtype=float)  # row-major: Tree SHAP walks rows


def _as_input(estimator: Any, matrix: np.ndarray) -> Any:
    """The estimator's own input form: a frame when it was fitted with column names."""
    names = getattr(estimator, "feature_names_in_", None)
    return pd.DataFrame(matrix, columns=list(names)) if names is not None else matrix


def _is_tree(estimator: Any) -> bool:
    module = type(estimator).__module__
    return module.startswith(("sklearn.tree", "sklearn.ensemble")) and "Bagging" not in _name(
        estimator
    )


def _is_linear(estimator: Any) -> bool:
    module = type(estimator).__module__
    linear = module.startswith("sklearn.linear_model") or _name(estimator) in (
        "LinearSVC",
        "LinearSVR",
    )
    return linear and hasattr(estimator, "coef_")


# -- pipelines: which input column each encoded column comes from ------------------------------


def _names_out(transformer: Any, names: list[str]) -> list[str]:
    try:
        if isinstance(transformer, ColumnTransformer):
            return [str(n) for n in transformer.get_feature_names_out()]
        return [str(n) for n in transformer.get_feature_names_out(names)]
    except Exception as exc:
        raise _Unmappable(f"{_name(transformer)} does not name its output columns") from exc


def _column_indices(columns: Any, names: list[str]) -> list[int]:
    if isinstance(columns, str | int):
        columns = [columns]
    if isinstance(columns, slice):
        return list(range(len(names)))[columns]
    values = list(np.asarray(columns).tolist()) if not isinstance(columns, list) else columns
    if values and all(isinstance(v, bool) for v in values):
        return [i for i, keep in enumerate(values) if keep]
    position = {n: i for i, n in enumerate(names)}
    try:
        return [v if isinstance(v, int) else position[str(v)] for v in values]
    except KeyError as exc:
        raise _Unmappable(f"column {exc} is not an input of the pipeline") from exc


def _sources(transformer: Any, names: list[str]) -> list[frozenset[int]]:
    """For each output column of a fitted transformer, the input positions it is made from."""
    identity = [frozenset([i]) for i in range(len(names))]
    if transformer is None or (isinstance(transformer, str) and transformer == "passthrough"):
        return identity
    if isinstance(transformer, str):  # "drop"
        return []
    if isinstance(transformer, Pipeline):
        current, current_names = identity, names
        for _, step in transformer.steps:
            if step is None or (isinstance(step, str) and step == "passthrough"):
                continue
            step_sources = _sources(step, current_names)
            current = [frozenset().union(*(current[i] for i in s)) for s in step_sources]
            current_names = _names_out(step, current_names)
        return current
    if isinstance(transformer, ColumnTransformer):
        total = max((s.stop for s in transformer.output_indices_.values()), default=0)
        result: list[frozenset[int] | None] = [None] * total
        for name, inner, columns in transformer.transformers_:
            block = transformer.output_indices_.get(name, slice(0, 0))
            if block.stop == block.start:
                continue
            positions = _column_indices(columns, names)
            inner_sources = _sources(inner, [names[i] for i in positions])
            if len(inner_sources) != block.stop - block.start:
                raise _Unmappable(f"{name!r} has an unexpected number of output columns")
            for offset, source in enumerate(inner_sources):
                result[block.start + offset] = frozenset(positions[i] for i in source)
        if any(s is None for s in result):
            raise _Unmappable("the column transformer leaves output columns unaccounted for")
        return [s for s in result if s is not None]
    out = _names_out(transformer, names)
    if len(names) == 1:
        return [frozenset([0])] * len(out)
    if out == names:
        return identity
    position = {n: i for i, n in enumerate(names)}
    mapped = []
    for column in out:
        candidates = [
            n
            for n in names
            if column == n or column.startswith(n + "_") or column.endswith("_" + n)
        ]
        if not candidates:
            raise _Unmappable(f"{_name(transformer)} output {column!r} matches no input column")
        mapped.append(frozenset([position[max(candidates, key=len)]]))
    return mapped


def _grouping(model: Any, features: list[str], *, transforms: bool) -> np.ndarray:
    """A (encoded columns x input features) 0/1 matrix; each encoded column has one source.
    A bare estimator's columns are its fitted column names (or the signature's, in order)."""
    inputs = [str(n) for n in getattr(model, "feature_names_in_", features)]
    sources = (
        _sources(model, inputs) if transforms else [frozenset([i]) for i in range(len(inputs))]
    )
    index = {f: i for i, f in enumerate(features)}
    grouping = np.zeros((len(sources), len(features)))
    for column, source in enumerate(sources):
        if len(source) != 1:
            raise _Unmappable(
                f"encoded column {column} mixes {len(source)} input columns "
                "(interactions cannot be summed back to one column)"
            )
        (only,) = source
        if inputs[only] not in index:
            raise _Unmappable(f"the pipeline uses column {inputs[only]!r} the signature lacks")
        grouping[column, index[inputs[only]]] = 1.0
    return grouping


# -- the explainer ----------------------------------------------------------------------------


def _three_d(values: Any, rows: int, width: int) -> np.ndarray:
    """shap's outputs ((n, f), (n, f, k) or a list of k (n, f)) as (n, f, k)."""
    if isinstance(values, list):
        values = np.stack([np.asarray(v) for v in values], axis=-1)
    array = np.asarray(values, dtype=float)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[:2] != (rows, width):
        raise ExplainError(f"unexpected SHAP output shape {array.shape}", code="explain_failed")
    return array


def _two_d(values: Any, rows: int) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim == 0:
        array = np.full((rows, 1), float(array))
    elif array.ndim == 1:
        array = np.tile(array, (rows, 1)) if array.shape[0] != rows else array[:, None]
    return array


class ModelExplainer:
    """Built once per model version and reused: the unwrapped pipeline, the mapping of encoded
    columns to input columns and the shap explainer (Tree SHAP builds its tree tables once)."""

    def __init__(
        self,
        model: Any,
        features: Sequence[str],
        background: pd.DataFrame | None,
        *,
        kernel_background_rows: int = KERNEL_BACKGROUND_ROWS,
    ) -> None:
        self.model = model
        self.features = list(features)
        self.notes: list[str] = []
        if not (is_classifier(model) or is_regressor(model)):
            raise ExplainError(
                f"{_name(model)} is neither a classifier nor a regressor; SHAP explanations "
                "need a model whose output is a class probability, a score or a number"
            )
        self.is_classifier = bool(is_classifier(model))
        self.classes: list[Any] | None = (
            [c.item() if hasattr(c, "item") else c for c in model.classes_]
            if self.is_classifier
            else None
        )
        if self.is_classifier and not (
            hasattr(model, "predict_proba") or hasattr(model, "decision_function")
        ):
            raise ExplainError(
                f"{_name(model)} has neither predict_proba nor decision_function: its "
                "labels alone cannot be attributed; register a model with scores"
            )
        self.background = background
        if isinstance(model, Pipeline) and len(model.steps) > 1:
            self.preprocess: Any = model[:-1]
            self.estimator: Any = model.steps[-1][1]
        else:
            self.preprocess, self.estimator = None, model
        self.kind: ExplainerKind = "kernel"
        self.shap_explainer: Any = None
        self.grouping: np.ndarray | None = None
        self._choose()
        if self.kind == "kernel":
            if background is None or background.empty:
                raise ExplainError(
                    f"{_name(model)} needs the model-agnostic explainer, which needs background "
                    "rows; register the version with its training data (dataset_version_id)",
                    code="no_background",
                )
            rows = min(kernel_background_rows, len(background))
            self.kernel_background = background.sample(n=rows, random_state=KERNEL_SEED)

    def _choose(self) -> None:
        estimator = self.estimator
        if not (_is_tree(estimator) or _is_linear(estimator)):
            return
        if _is_linear(estimator) and self.background is None:
            self.notes.append("no background rows for the linear explainer; used Kernel SHAP")
            return
        try:
            if self.preprocess is not None:
                self.grouping = _grouping(self.preprocess, self.features, transforms=True)
            else:
                self.grouping = _grouping(estimator, self.features, transforms=False)
        except _Unmappable as exc:
            self.notes.append(f"encoded columns not traceable to inputs ({exc}); used Kernel SHAP")
            return
        import shap

        try:
            if _is_tree(estimator):
                self.shap_explainer = shap.TreeExplainer(estimator)
                self.kind = "tree"
            else:
                assert self.background is not None
                data = self._transform(self.background)
                masker = shap.maskers.Independent(data, max_samples=len(data))
                self.shap_explainer = shap.LinearExplainer(estimator, masker)
                self.kind = "linear"
        except Exception as exc:  # shap refuses this model: the agnostic path still works
            self.notes.append(f"shap cannot read {_name(estimator)} ({exc}); used Kernel SHAP")
            self.grouping = None

    def _transform(self, frame: pd.DataFrame) -> np.ndarray:
        if self.preprocess is not None:
            return _dense(self.preprocess.transform(frame))
        names = getattr(self.estimator, "feature_names_in_", None)
        columns = [str(n) for n in names] if names is not None else self.features
        return _dense(frame[columns].astype(float))

    def minimum_evals(self) -> int:
        """Kernel SHAP needs each feature seen both present and absent."""
        return 2 * len(self.features) + 1

    def explain(
        self, frame: pd.DataFrame, *, max_evals: int | None = None, max_work: int | None = None
    ) -> Explanation:
        """`max_work` bounds Kernel SHAP's model calls (rows x evaluations x background rows)."""
        if self.kind == "kernel":
            return self._explain_kernel(frame, max_evals, max_work)
        matrix = self._transform(frame)
        rows = len(frame)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.kind == "tree":
                raw = self.shap_explainer.shap_values(matrix, check_additivity=False)
            else:
                raw = self.shap_explainer.shap_values(matrix)
        values = _three_d(raw, rows, matrix.shape[1])
        assert self.grouping is not None
        if self.grouping.shape[0] != matrix.shape[1]:
            raise ExplainError(
                f"the pipeline made {matrix.shape[1]} columns but names "
                f"{self.grouping.shape[0]}; it cannot be explained per input column",
                code="explain_failed",
            )
        base = _two_d(self.shap_explainer.expected_value, rows)
        space = self._space()
        outputs = self._outputs(matrix, space)
        grouped = np.einsum("nte,tf->nfe", values, self.grouping)
        return self._finish(grouped, base, outputs, space, [], None, None)

    def _space(self) -> OutputSpace:
        if not self.is_classifier:
            return "raw"
        if self.kind == "tree":
            tree_output = getattr(self.shap_explainer.model, "tree_output", "")
            return "probability" if tree_output == "probability" else "log_odds"
        return "log_odds" if _name(self.estimator) == "LogisticRegression" else "margin"

    def _outputs(self, matrix: np.ndarray, space: OutputSpace) -> np.ndarray:
        data = _as_input(self.estimator, matrix)
        if space == "probability":
            result = self.estimator.predict_proba(data)
        elif space == "raw":
            result = self.estimator.predict(data)
        else:
            result = self.estimator.decision_function(data)
        return _two_d(result, len(matrix))

    def _explain_kernel(
        self, frame: pd.DataFrame, max_evals: int | None, max_work: int | None
    ) -> Explanation:
        import shap

        minimum = self.minimum_evals()
        if max_evals is not None and max_evals < minimum:
            raise ExplainError(
                f"max_evals={max_evals} is too small for {len(self.features)} features: "
                f"Kernel SHAP needs at least 2 x features + 1 = {minimum} model evaluations "
                "per row; raise max_evals or leave it out",
                code="budget_too_small",
            )
        exhaustive = 2 ** len(self.features) - 2 if len(self.features) < 30 else math.inf
        evals = int(min(max_evals or max(DEFAULT_MAX_EVALS, minimum), exhaustive + 1))
        evals = max(evals, minimum)
        background = self.kernel_background
        work = len(frame) * evals * len(background)
        if max_work is not None and work > max_work:
            raise ExplainError(
                f"{len(frame)} rows x {evals} evaluations x {len(background)} background rows "
                f"= {work:,} model predictions is over this request's limit of {max_work:,}; "
                "send fewer rows, lower max_evals, or compute global importance as a job",
                code="budget_exceeded",
            )
        encoder = _Codes(pd.concat([background, frame], ignore_index=True))
        predict, space = self._agnostic_output()

        def model_output(codes: np.ndarray) -> np.ndarray:
            return _two_d(predict(encoder.decode(codes)), len(codes))

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            explainer = shap.KernelExplainer(model_output, encoder.encode(background))
            raw = explainer.shap_values(
                encoder.encode(frame), nsamples=evals, silent=True, l1_reg=False
            )
        values = _three_d(raw, len(frame), len(self.features))
        base = _two_d(explainer.expected_value, len(frame))
        outputs = model_output(encoder.encode(frame))
        approximations = []
        if evals < exhaustive:
            approximations.append(
                f"Kernel SHAP estimated from {evals} coalitions per row (exact Shapley values "
                f"need all {exhaustive:,}); raise max_evals for a closer estimate"
            )
        return self._finish(values, base, outputs, space, approximations, evals, len(background))

    def _agnostic_output(self) -> tuple[Callable[[pd.DataFrame], Any], OutputSpace]:
        model = self.model
        if not self.is_classifier:
            return model.predict, "raw"
        if hasattr(model, "predict_proba"):
            return model.predict_proba, "probability"
        return model.decision_function, "margin"

    def _finish(
        self,
        values: np.ndarray,
        base: np.ndarray,
        outputs: np.ndarray,
        space: OutputSpace,
        approximations: list[str],
        max_evals: int | None,
        background_rows: int | None,
    ) -> Explanation:
        classes = self.classes
        if classes is not None and values.shape[2] == 1 and len(classes) == 2:
            # a binary margin explains the positive class; the negative one is its mirror
            values = np.concatenate([-values, values], axis=2)
            base = np.concatenate([-base, base], axis=1)
            outputs = np.concatenate([-outputs, outputs], axis=1)
        if outputs.shape != base.shape or values.shape[2] != base.shape[1]:
            raise ExplainError(
                f"{_name(self.model)} has {outputs.shape[1]} outputs per row; only single-output "
                "regressors and classifiers are supported",
            )
        error = np.abs(values.sum(axis=1) + base - outputs)
        max_error = float(error.max()) if error.size else 0.0
        tolerance = RELATIVE_TOLERANCE * max(1.0, float(np.abs(outputs).max(initial=0.0)))
        additive = max_error <= tolerance
        if not additive:
            approximations = [
                *approximations,
                f"the SHAP values miss the model output by up to {max_error:.3g} "
                f"(tolerance {tolerance:.3g})",
            ]
        return Explanation(
            explainer=self.kind,
            output_space=space,
            features=self.features,
            classes=classes if classes is not None and values.shape[2] == len(classes) else None,
            values=values,
            base_values=base,
            outputs=outputs,
            max_error=max_error,
            tolerance=tolerance,
            additive=additive,
            approximations=approximations,
            notes=list(self.notes),
            max_evals=max_evals,
            background_rows=background_rows,
        )


class _Codes:
    """Numbers for Kernel SHAP's masking: categorical columns become integer codes and back."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.columns = list(frame.columns)
        self.dtypes = frame.dtypes
        self.categories: dict[str, list[Any]] = {}
        for column in self.columns:
            if not pd.api.types.is_numeric_dtype(frame[column]) or pd.api.types.is_bool_dtype(
                frame[column]
            ):
                seen = list(dict.fromkeys(frame[column].astype(object).tolist()))
                self.categories[column] = seen

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        parts = []
        for column in self.columns:
            series = frame[column]
            if column in self.categories:
                position = {v: i for i, v in enumerate(self.categories[column])}
                parts.append(np.array([position[v] for v in series.astype(object)], dtype=float))
            else:
                parts.append(pd.to_numeric(series, errors="coerce").to_numpy(dtype=float))
        return np.column_stack(parts)

    def decode(self, codes: np.ndarray) -> pd.DataFrame:
        data: dict[str, Any] = {}
        for j, column in enumerate(self.columns):
            values = codes[:, j]
            if column in self.categories:
                picked = np.asarray(self.categories[column], dtype=object)[values.astype(int)]
                data[column] = pd.Series(picked, dtype=object)
                if pd.api.types.is_bool_dtype(self.dtypes[column]):
                    data[column] = data[column].astype(self.dtypes[column])
            elif pd.api.types.is_integer_dtype(self.dtypes[column]) and not np.isnan(values).any():
                data[column] = values.astype(self.dtypes[column])
            else:
                data[column] = values
        return pd.DataFrame(data, columns=self.columns)


# -- global importance and attribution drift --------------------------------------------------


def mean_abs(explanation: Explanation) -> list[dict[str, Any]]:
    """Mean |SHAP| per feature (averaged over classes, and per class), most important first."""
    per_output = np.abs(explanation.values).mean(axis=0)  # (features, outputs)
    overall = per_output.mean(axis=1)
    labels = [str(c) for c in explanation.classes] if explanation.classes else None
    items = []
    for i, feature in enumerate(explanation.features):
        item: dict[str, Any] = {"feature": feature, "mean_abs_shap": float(overall[i])}
        if labels is not None:
            item["per_class"] = {c: float(per_output[i, k]) for k, c in enumerate(labels)}
        items.append(item)
    items.sort(key=lambda x: (-x["mean_abs_shap"], x["feature"]))
    for rank, item in enumerate(items, start=1):
        item["rank"] = rank
    return items


def ndcg(reference: dict[str, float], candidate: dict[str, float], k: int | None = None) -> float:
    """How well the candidate's feature ranking keeps the reference's order: the DCG of the
    candidate's order scored with the reference's importances, over the best possible DCG.
    Only the candidate's order matters, so importances on different scales compare."""
    features = sorted(set(reference) | set(candidate))
    order = sorted(features, key=lambda f: (-candidate.get(f, 0.0), f))
    ideal = sorted((reference.get(f, 0.0) for f in features), reverse=True)
    depth = len(features) if k is None else min(k, len(features))

    def dcg(gains: Sequence[float]) -> float:
        return sum(g / math.log2(i + 2) for i, g in enumerate(gains[:depth]))

    best = dcg(ideal)
    return 1.0 if best <= 0 else dcg([reference.get(f, 0.0) for f in order]) / best


def attribution_drift(
    reference: dict[str, float],
    candidate: dict[str, float],
    *,
    k: int | None = None,
    threshold: float = 0.9,
) -> dict[str, Any]:
    """Whether the candidate's attributions rank features differently enough to matter:
    drifted when nDCG@k falls below the threshold. Usable by alert rules and guardrails."""
    score = ndcg(reference, candidate, k)
    features = sorted(set(reference) | set(candidate))

    def ranks(scores: dict[str, float]) -> dict[str, int]:
        ordered = sorted(features, key=lambda f: (-scores.get(f, 0.0), f))
        return {f: i + 1 for i, f in enumerate(ordered)}

    before, after = ranks(reference), ranks(candidate)
    changes = [
        {"feature": f, "reference_rank": before[f], "candidate_rank": after[f]}
        for f in sorted(features, key=lambda f: before[f])
    ]
    return {
        "ndcg": score,
        "k": k,
        "threshold": threshold,
        "drifted": score < threshold,
        "rank_changes": changes,
    }
