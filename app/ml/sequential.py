"""Statistics for A/B experiments on a deployment: per-arm summaries and an always-valid test.

Users watch experiment dashboards continuously. A fixed-horizon z-test re-run at every look
declares false winners far more often than alpha (with 40 looks, roughly one A/A test in four),
so the comparison uses the mixture sequential probability ratio test (mSPRT) of Johari, Koomen,
Pekelis & Walsh, "Always valid inference: continuous monitoring of A/B tests" (Operations
Research 70(3), 2022; arXiv:1512.04922), with a normal mixing distribution. Its p-value and
confidence sequence stay valid however often, and whenever, the data are looked at.

Model: the difference of arm means d = mean_t - mean_c is treated as normal with variance
V = var_c / n_c + var_t / n_t (plug-in, per-arm sample variances; unequal allocation allowed).
Mixing the effect theta over N(0, tau^2) gives the mixture likelihood ratio against theta = 0,

    Lambda = sqrt(V / (V + tau^2)) * exp(d^2 tau^2 / (2 V (V + tau^2))),

which is Johari et al.'s two-sample formula (their V is 2 sigma^2 / n for n per arm) and the
ratio of the marginal densities N(d; 0, V + tau^2) / N(d; 0, V). Under the null it is a
nonnegative martingale (nested samples give the canonical joint distribution
Cov(d_m, d_n) = V_n for any allocation), so Ville's inequality bounds
P(sup_n Lambda_n >= 1/alpha) by alpha. The always-valid p-value is min(1, 1 / Lambda), and
inverting Lambda(d - theta) < 1/alpha gives the confidence sequence

    d +/- sqrt(V (V + tau^2) / tau^2 * (log((V + tau^2) / V) - 2 log(alpha))),

Robbins' normal-mixture boundary as given by Howard, Ramdas, McAuliffe & Sekhon, "Time-uniform,
nonparametric, nonasymptotic confidence sequences" (Annals of Statistics 49(2), 2021). The
p-value and interval are the two faces of one test: p <= alpha exactly when 0 lies outside the
interval.

Both are computed for the data as they are now. Johari et al.'s sequence-level p-value is the
running minimum over looks (and the sequence-level interval the running intersection); a caller
that stores results per look keeps those. The guarantee is asymptotic in one respect: the
variances are plug-in estimates, as in the paper's treatment of unknown variance, so very small
arms are guarded by min_samples, not by the test.

Binary metrics (0/1: label matched the prediction, a conversion) need no separate path: the
ddof=1 sample variance of 0/1 data is n / (n - 1) * p(1 - p), the per-arm Bernoulli variance with
Bessel's correction. Per-arm (unpooled) variances are used for the test as well as for the
interval because only they describe the difference when the arms truly differ, and using one V
for both keeps the p-value and the interval consistent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np
import numpy.typing as npt

Verdict = Literal["insufficient_samples", "no_difference_yet", "treatment_better", "control_better"]


@dataclass(frozen=True)
class ArmSummary:
    """What one arm looks like at a fixed horizon, for display next to the sequential result."""

    n: int
    mean: float
    variance: float  # sample variance (ddof=1), 0.0 when n < 2
    ci_low: float  # (1 - alpha) normal CI of the mean; infinite when n < 2
    ci_high: float


@dataclass(frozen=True)
class Comparison:
    """The always-valid comparison of treatment against control, with a verdict to act on."""

    difference: float  # treatment mean - control mean
    ci_low: float  # always-valid (1 - alpha) confidence sequence for the difference
    ci_high: float
    p_value: float  # always-valid p-value (mSPRT), in [0, 1]
    significant: bool  # p_value <= alpha, whatever the sample sizes
    verdict: Verdict
    reason: str


def summarize(values: Sequence[float], alpha: float = 0.05) -> ArmSummary:
    """Fixed-horizon mean and normal CI of one arm: valid for a single look only.

    An arm with one observation has no variance estimate, so its interval is (-inf, inf) rather
    than a falsely certain point. A constant arm has variance exactly 0 and a zero-width CI.
    """
    _check_alpha(alpha)
    data = _as_finite_array(values, "values")
    return _summary(data, alpha)


def compare(
    control: Sequence[float],
    treatment: Sequence[float],
    *,
    alpha: float = 0.05,
    min_samples: int = 100,
    mixing_variance: float | None = None,
    higher_is_better: bool = True,
) -> Comparison:
    """Always-valid mSPRT comparison of the treatment mean against the control mean.

    A winner needs both arms to have at least min_samples observations and the always-valid
    p-value to be at most alpha; below min_samples the verdict is "insufficient_samples" while
    the difference, interval and p-value are still reported. With higher_is_better=False (a
    loss, a latency) a significantly lower treatment mean is the better one.

    mixing_variance is tau^2, the prior variance of the effect on the metric's scale; the test
    has most power for effects of about tau. It defaults to the pooled within-arm variance
    s_p^2, a prior of one standard deviation on the standardised effect. That choice makes the
    test scale-free (with equal arm variances it depends only on the z-statistic and the sample
    sizes), and because sensitivity to tau is only logarithmic, the interval at n per arm stays
    within about 25% of the width of the interval tuned for that n, for n up to ~5,000, and
    grows like sqrt(log n) beyond. Pass a smaller tau^2 when the effects that matter are much
    smaller than the metric's spread and the experiment will be long.

    Degenerate arms are handled explicitly: if either arm has fewer than two observations there
    is no variance estimate, so p = 1 and the interval is (-inf, inf). If both arms are constant
    (V = 0), equal constants give p = 1 and different ones p = 0, with a zero-width interval.
    """
    _check_alpha(alpha)
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 2:
        raise ValueError(f"min_samples must be an integer >= 2, got {min_samples!r}")
    if mixing_variance is not None and not (math.isfinite(mixing_variance) and mixing_variance > 0):
        raise ValueError(f"mixing_variance must be finite and > 0, got {mixing_variance!r}")
    arm_c = _summary(_as_finite_array(control, "control"), alpha)
    arm_t = _summary(_as_finite_array(treatment, "treatment"), alpha)
    difference = arm_t.mean - arm_c.mean
    p_value, ci_low, ci_high = _msprt(arm_c, arm_t, difference, alpha, mixing_variance)
    significant = p_value <= alpha
    verdict = _verdict(arm_c.n, arm_t.n, difference, significant, min_samples, higher_is_better)
    return Comparison(
        difference=difference,
        ci_low=ci_low,
        ci_high=ci_high,
        p_value=p_value,
        significant=significant,
        verdict=verdict,
        reason=_reason(
            verdict,
            arm_c,
            arm_t,
            difference,
            (ci_low, ci_high),
            p_value,
            alpha,
            min_samples,
            higher_is_better,
        ),
    )


def _check_alpha(alpha: float) -> None:
    if not (math.isfinite(alpha) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be strictly between 0 and 1, got {alpha!r}")


def _as_finite_array(values: Sequence[float], name: str) -> npt.NDArray[np.float64]:
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1:
        raise ValueError(f"{name} must be a one-dimensional sequence, got shape {data.shape}")
    if data.size == 0:
        raise ValueError(f"{name} is empty: at least one observation is needed")
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or infinity)")
    return data


def _summary(data: npt.NDArray[np.float64], alpha: float) -> ArmSummary:
    n = int(data.size)
    first = float(data[0])
    if bool((data == first).all()):
        # Exact, so equal constant arms of different lengths differ by exactly 0, not by an ulp
        # that a near-zero variance would blow up into a "significant" difference.
        mean, variance = first, 0.0
    else:
        # Two-pass ddof=1 variance by hand: np.var's overhead dominates a dashboard's many looks.
        mean = float(data.sum()) / n
        deviations = data - mean
        variance = float(deviations @ deviations) / (n - 1)
    if n < 2:
        return ArmSummary(n=n, mean=mean, variance=0.0, ci_low=-math.inf, ci_high=math.inf)
    half = NormalDist().inv_cdf(1.0 - alpha / 2.0) * math.sqrt(variance / n)
    return ArmSummary(n=n, mean=mean, variance=variance, ci_low=mean - half, ci_high=mean + half)


def _msprt(
    arm_c: ArmSummary,
    arm_t: ArmSummary,
    difference: float,
    alpha: float,
    mixing_variance: float | None,
) -> tuple[float, float, float]:
    """The always-valid p-value and confidence sequence, in log space to survive huge z."""
    if arm_c.n < 2 or arm_t.n < 2:
        return 1.0, -math.inf, math.inf
    v = arm_c.variance / arm_c.n + arm_t.variance / arm_t.n
    if v == 0.0:
        return (1.0 if difference == 0.0 else 0.0), difference, difference
    if mixing_variance is None:
        pooled = (arm_c.n - 1) * arm_c.variance + (arm_t.n - 1) * arm_t.variance
        tau2 = pooled / (arm_c.n + arm_t.n - 2)  # > 0 since v > 0
    else:
        tau2 = mixing_variance
    ratio = tau2 / v
    log_growth = math.log1p(ratio)
    z2 = difference * difference / v
    log_lambda = -0.5 * log_growth + 0.5 * z2 * ratio / (1.0 + ratio)
    p_value = 1.0 if log_lambda <= 0.0 else math.exp(-log_lambda)
    half = math.sqrt(v * (1.0 + ratio) / ratio * (log_growth - 2.0 * math.log(alpha)))
    return p_value, difference - half, difference + half


def _verdict(
    n_c: int,
    n_t: int,
    difference: float,
    significant: bool,
    min_samples: int,
    higher_is_better: bool,
) -> Verdict:
    if min(n_c, n_t) < min_samples:
        return "insufficient_samples"
    if not significant:
        return "no_difference_yet"
    return "treatment_better" if (difference > 0) == higher_is_better else "control_better"


def _reason(
    verdict: Verdict,
    arm_c: ArmSummary,
    arm_t: ArmSummary,
    difference: float,
    ci: tuple[float, float],
    p_value: float,
    alpha: float,
    min_samples: int,
    higher_is_better: bool,
) -> str:
    level = f"{100 * (1 - alpha):g}%"
    interval = f"always-valid {level} CI [{ci[0]:+.4g}, {ci[1]:+.4g}]"
    samples = f"{arm_c.n} control and {arm_t.n} treatment samples"
    p_text = "p < 0.0001" if p_value < 1e-4 else f"p = {p_value:.4g}"
    if verdict == "insufficient_samples":
        return (
            f"Not enough data for a verdict: {samples}, and each arm needs at least "
            f"{min_samples} (difference {difference:+.4g}, {interval}, always-valid {p_text})."
        )
    if verdict == "no_difference_yet":
        return (
            f"No winner yet after {samples}: the difference {difference:+.4g} has {interval}, "
            f"which includes 0 (always-valid {p_text}, above alpha = {alpha:g})."
        )
    winner = "Treatment" if verdict == "treatment_better" else "Control"
    direction = "higher" if higher_is_better else "lower"
    return (
        f"{winner} is better ({direction} is better): treatment mean {arm_t.mean:.4g} vs control "
        f"{arm_c.mean:.4g}, difference {difference:+.4g} with {interval} after {samples} "
        f"(always-valid {p_text}, at most alpha = {alpha:g})."
    )
