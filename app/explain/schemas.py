from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.explain.models import ImportanceStatus

ClassLabel = str | int | float | bool
PlotFormat = Literal["png", "svg"]


class ExplainRequest(BaseModel):
    """Rows in the predict shapes (`rows`, `instances` or `dataframe_split`), and options."""

    model_config = ConfigDict(extra="forbid")

    rows: list[dict[str, Any]] | None = Field(
        default=None, examples=[[{"age": 42, "income": 51000.0, "city": "Paris"}]]
    )
    instances: list[dict[str, Any]] | None = Field(default=None, description="Alias of rows.")
    dataframe_split: dict[str, Any] | None = Field(
        default=None, description='{"columns": [...], "data": [[...], ...]}'
    )
    output_class: ClassLabel | None = Field(
        default=None, description="Explain only this class (default: every class)."
    )
    max_evals: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Model-agnostic explainer only: model evaluations per row (the latency "
        "budget); at least 2 x features + 1.",
    )

    def payload(self) -> dict[str, Any]:
        """The body the predict contract reads (serving_contract.frame_from_payload)."""
        return {
            key: value
            for key in ("rows", "instances", "dataframe_split")
            if (value := getattr(self, key)) is not None
        }


class OutputExplanation(BaseModel):
    class_label: ClassLabel | None = Field(description="The class explained; null: regression.")
    base_value: float = Field(description="Expected output over the background data.")
    output: float = Field(description="The model's output that base_value + SHAP values sum to.")
    shap_values: dict[str, float] = Field(description="Per input column.")


class RowExplanation(BaseModel):
    row: int
    outputs: list[OutputExplanation]


class Additivity(BaseModel):
    holds: bool = Field(description="base_value + sum(shap_values) == output within tolerance")
    max_error: float
    tolerance: float


class ExplanationRead(BaseModel):
    model: str
    version: int
    explainer: Literal["tree", "linear", "kernel"]
    output_space: Literal["probability", "log_odds", "margin", "raw"] = Field(
        description="What the values explain: probabilities, log-odds, a decision margin "
        "or the regression output."
    )
    features: list[str] = Field(description="The model's input columns, in signature order.")
    classes: list[ClassLabel] | None
    additivity: Additivity
    approximate: bool
    approximations: list[str] = Field(description="Why the values are approximate, if they are.")
    notes: list[str] = Field(description="How the explainer was chosen, when not the obvious way.")
    max_evals: int | None = None
    background_rows: int | None = None
    rows: list[RowExplanation]


class ImportanceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sample_rows: int = Field(
        default=500, ge=10, le=10_000, description="Rows sampled (seeded) from the reference data."
    )
    max_evals: int | None = Field(default=None, ge=1, le=100_000)
    refresh: bool = Field(default=False, description="Compute again even if cached.")
    deployment: str | None = Field(
        default=None,
        max_length=63,
        description="Explain this deployment's logged production inputs (the version must "
        "serve in it) instead of the reference data.",
    )
    window: str = Field(default="24h", max_length=20, description="With `deployment`: e.g. 24h.")


class FeatureImportanceItem(BaseModel):
    feature: str
    mean_abs_shap: float
    rank: int
    per_class: dict[str, float] | None = None


class ImportanceRead(BaseModel):
    """A global importance result and the state of the job computing it."""

    id: int
    model: str
    version: int
    status: ImportanceStatus
    status_message: str | None
    source: str
    dataset_version_id: int | None
    data_digest: str
    sample_rows: int
    sample_size: int | None = Field(description="Rows actually explained.")
    explainer: str | None
    output_space: str | None
    classes: list[Any] | None
    features: list[FeatureImportanceItem] | None
    approximations: list[str] | None
    duration_seconds: float | None
    rows_per_second: float | None
    cached: bool = Field(default=False, description="True when an earlier result was returned.")
    requested_by: str | None
    created_at: datetime
    computed_at: datetime | None


class RankChange(BaseModel):
    feature: str
    reference_rank: int
    candidate_rank: int


class AttributionDriftRead(BaseModel):
    model: str
    version: int = Field(description="The candidate version.")
    baseline_version: int
    comparison: str = Field(
        default="versions",
        description="versions (this version vs the baseline's, on reference data) or "
        "production (this version on its production window vs on its reference data)",
    )
    ndcg: float = Field(description="1.0: same ranking of features; lower: reordered.")
    k: int | None
    threshold: float
    drifted: bool = Field(description="ndcg < threshold")
    importance_id: int
    baseline_importance_id: int
    rank_changes: list[RankChange]
