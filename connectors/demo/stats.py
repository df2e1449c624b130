"""The small statistics the demo and the real-data example need: fit, AUC, ROC.

Why here and not a dependency: logistic regression by Newton's method and the AUC as a rank
statistic are a few lines of numpy each, and pulling scikit-learn into ``make demo`` would cost a
newcomer more install time than the whole demo runs. The fit is the *plaintext* baseline (a bank
fitting on data it holds); the secure path is elsewhere.

- :func:`fit_logistic`: L2-regularised logistic regression (Newton-Raphson / IRLS) on
  standardised columns, returned on the original scale of the columns, so the weights apply to
  the values the providers publish as they are.
- :func:`auc`: the area under the ROC curve as the Mann-Whitney U statistic with average ranks
  for ties (exact, no binning).
- :func:`roc_curve`: false- and true-positive rates at every distinct threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from trusted_space.queries.score import logistic

__all__ = ["LogisticFit", "auc", "fit_logistic", "roc_curve"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class LogisticFit:
    """A fitted model on the original column scale: ``logit = intercept + x @ weights``."""

    intercept: float
    weights: FloatArray
    iterations: int

    def logits(self, x: npt.ArrayLike) -> FloatArray:
        out: FloatArray = self.intercept + np.asarray(x, dtype=np.float64) @ self.weights
        return out


def fit_logistic(
    x: npt.ArrayLike, y: npt.ArrayLike, *, l2: float = 1e-2, max_iter: int = 50, tol: float = 1e-9
) -> LogisticFit:
    """Fit ``P(y=1) = logistic(b + x @ w)`` by Newton's method, L2 penalty on standardised w.

    Args:
        x: ``(n, k)`` features.
        y: ``n`` labels in {0, 1}.
        l2: penalty per example on the standardised weights (the intercept is not penalised).
        max_iter: Newton steps at most.
        tol: stop when the largest step is below this.

    Raises:
        ValueError: shapes that do not match, labels other than 0/1, or a single class.
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.ndim != 2 or ys.shape != (xs.shape[0],):
        raise ValueError(f"x must be (n, k) and y (n,), got {xs.shape} and {ys.shape}")
    if not np.isin(ys, (0.0, 1.0)).all() or ys.min() == ys.max():
        raise ValueError("labels must be 0/1 with both classes present")
    mean = xs.mean(axis=0)
    scale = xs.std(axis=0)
    scale[scale == 0] = 1.0
    z = np.column_stack([np.ones(len(xs)), (xs - mean) / scale])
    n, k = z.shape
    beta = np.zeros(k)
    beta[0] = np.log(ys.mean() / (1 - ys.mean()))
    penalty = np.full(k, l2 * n)
    penalty[0] = 0.0
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - reported after the loop
        p = logistic(z @ beta)
        gradient = z.T @ (ys - p) - penalty * beta
        hessian = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty)
        try:
            step = np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:  # (quasi-)separable data: take the least-squares step
            step = np.linalg.lstsq(hessian, gradient, rcond=None)[0]
        beta += step
        if float(np.max(np.abs(step))) < tol:
            break
    weights = beta[1:] / scale
    intercept = float(beta[0] - np.dot(weights, mean))
    return LogisticFit(intercept=intercept, weights=weights, iterations=iterations)


def _ranks(values: FloatArray) -> FloatArray:
    """1-based ranks, ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(values)]])
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + 1 + e) / 2.0
    return ranks


def auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve (probability a random positive outranks a random negative).

    Raises:
        ValueError: lengths differ or one class is absent.
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError("labels and scores differ in length")
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        raise ValueError("the AUC needs both classes")
    ranks = _ranks(s)
    u = float(ranks[y].sum()) - positives * (positives + 1) / 2.0
    return u / (positives * negatives)


def roc_curve(labels: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """``(fpr, tpr)`` from (0, 0) to (1, 1), one point per distinct score (highest first)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    y_sorted, s_sorted = y[order], s[order]
    last = np.concatenate([np.flatnonzero(np.diff(s_sorted)), [len(s_sorted) - 1]])
    tp = np.cumsum(y_sorted)[last]
    fp = (last + 1) - tp
    positives = max(int(y.sum()), 1)
    negatives = max(len(y) - int(y.sum()), 1)
    fpr = np.concatenate([[0.0], fp / negatives])
    tpr = np.concatenate([[0.0], tp / positives])
    return fpr, tpr
