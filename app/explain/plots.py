"""PNG and SVG charts of explanations for dashboards and reports.

Drawn with matplotlib's object API on the Agg backend (no pyplot, no global figure state), so
concurrent requests in the thread pool cannot draw on each other's figures.
"""

import io
from collections.abc import Sequence
from typing import Any, Literal

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure

Format = Literal["png", "svg"]
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "svg": "image/svg+xml"}
POSITIVE, NEGATIVE, NEUTRAL = "#d62728", "#1f77b4", "#7f7f7f"


def _render(figure: Figure, fmt: Format) -> bytes:
    buffer = io.BytesIO()
    metadata: dict[str, Any] = {"Date": None} if fmt == "svg" else {}
    figure.savefig(buffer, format=fmt, dpi=110, bbox_inches="tight", metadata=metadata)
    return buffer.getvalue()


def importance_bar(
    items: Sequence[tuple[str, float]], *, title: str, fmt: Format, top: int = 20
) -> bytes:
    """Horizontal bars of mean |SHAP|, most important on top."""
    shown = list(items)[:top]
    figure = Figure(figsize=(7, 0.4 * len(shown) + 1.2))
    axes = figure.add_subplot()
    names = [name for name, _ in shown][::-1]
    values = [value for _, value in shown][::-1]
    axes.barh(names, values, color=NEGATIVE)
    axes.set_xlabel("mean |SHAP value|")
    axes.set_title(title)
    for position, value in enumerate(values):
        axes.text(value, position, f" {value:.3g}", va="center", fontsize=8)
    axes.spines[["top", "right"]].set_visible(False)
    return _render(figure, fmt)


def waterfall(
    contributions: Sequence[tuple[str, Any, float]],
    *,
    base_value: float,
    output: float,
    title: str,
    fmt: Format,
    top: int = 12,
) -> bytes:
    """From the base value to the output, one bar per feature (value shown), largest first;
    the smallest contributions beyond `top` are folded into one bar."""
    ordered = sorted(contributions, key=lambda c: -abs(c[2]))
    shown = [(f"{name} = {value}", shap) for name, value, shap in ordered[:top]]
    rest = ordered[top:]
    if rest:
        shown.append((f"{len(rest)} other features", sum(c[2] for c in rest)))
    figure = Figure(figsize=(8, 0.45 * len(shown) + 1.6))
    axes = figure.add_subplot()
    start = base_value
    labels, lefts, widths, colors = [], [], [], []
    for label, shap in shown:
        labels.append(label)
        lefts.append(start if shap >= 0 else start + shap)
        widths.append(abs(shap))
        colors.append(POSITIVE if shap >= 0 else NEGATIVE)
        start += shap
    positions = list(range(len(labels)))[::-1]
    axes.barh(positions, widths, left=lefts, color=colors)
    axes.set_yticks(positions, labels, fontsize=8)
    for position, left, width, (_, shap) in zip(positions, lefts, widths, shown, strict=True):
        axes.text(left + width, position, f" {shap:+.3g}", va="center", fontsize=8)
    axes.axvline(base_value, color=NEUTRAL, linestyle="--", linewidth=0.8)
    axes.axvline(output, color="black", linewidth=0.8)
    axes.set_xlabel(f"model output (base {base_value:.4g} -> {output:.4g})")
    axes.set_title(title)
    axes.spines[["top", "right"]].set_visible(False)
    return _render(figure, fmt)
