"""The plaintext reference of joint training, and the schedule both runs share.

:func:`train_plaintext` runs the protocol's schedule (held-out split, epoch orders, zero
initialisation, update rule, early stopping on the same loss) in float64 numpy, with the exact
sigmoid by default or the protocol's approximation: the yardstick the secure run is tested
against.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from trusted_space.errors import ValidationError
from trusted_space.protocols.train.fold import fold, standardise
from trusted_space.queries.score import logistic
from trusted_space.queries.train import TrainParams

__all__ = [
    "PlainTraining",
    "auc",
    "epoch_order",
    "log_loss",
    "should_stop",
    "split_rows",
    "taylor_loss",
    "train_plaintext",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Ring = npt.NDArray[np.uint64]
Progress = Callable[[str, float], None]


def split_rows(n: int, validation: float, seed: int) -> tuple[IntArray, IntArray]:
    """``(training rows, held-out rows)`` of a cohort of ``n``, both sorted (seeded)."""
    if n < 2:
        raise ValidationError(f"a cohort of {n} rows is too small to train on")
    rng = np.random.default_rng([seed, 0])
    perm = rng.permutation(n)
    held = min(round(n * validation), n - 1)
    return np.sort(perm[held:]).astype(np.int64), np.sort(perm[:held]).astype(np.int64)


def epoch_order(train_rows: IntArray, seed: int, epoch: int) -> IntArray:
    """The training rows in epoch ``epoch``'s order (seeded, a fresh shuffle per epoch)."""
    rng = np.random.default_rng([seed, epoch])
    return np.asarray(train_rows[rng.permutation(len(train_rows))], dtype=np.int64)


def taylor_loss(z: FloatArray, y: FloatArray) -> float:
    """Mean of ``log 2 - (2y-1)·z/2 + z²/8``: the held-out loss both trainers stop on."""
    if len(z) == 0:
        return math.nan
    return float(math.log(2.0) + np.mean(z * z / 8 - (2 * y - 1) * z / 2))


def log_loss(z: FloatArray, y: FloatArray) -> float:
    """Mean logistic loss of logits ``z`` (numerically stable)."""
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def auc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64) > 0.5
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        raise ValidationError("AUC needs both classes")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def should_stop(losses: Sequence[float], patience: int) -> bool:
    best = int(np.argmin(losses))
    return len(losses) - 1 - best >= patience


@dataclass(frozen=True)
class PlainTraining:
    """The plaintext reference's result.

    Attributes:
        intercept: the intercept.
        weights: the weights, in the input's column order.
        losses: held-out loss per epoch run (empty without a held-out split).
        epochs_run: epochs run.
        best_epoch: the epoch whose weights were kept (1-based).
        seconds: wall time per epoch.
    """

    intercept: float
    weights: FloatArray
    losses: tuple[float, ...]
    epochs_run: int
    best_epoch: int
    seconds: tuple[float, ...]

    def logits(self, x: npt.ArrayLike) -> FloatArray:
        return self.intercept + np.asarray(x, dtype=np.float64) @ self.weights


def train_plaintext(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    params: TrainParams,
    *,
    sigmoid: Callable[[FloatArray], FloatArray] | None = None,
    keep_epoch: int | None = None,
) -> PlainTraining:
    """Logistic regression in float64 with the joint protocol's schedule (the reference).

    As in the protocol, each column is standardised over the ``n`` rows
    (:func:`~trusted_space.protocols.train.fold.standardise`), the SGD runs on those, and the
    returned model is folded back to the raw scale.

    Args:
        x: features ``(n, k)`` in the joint layout's column order (no intercept column).
        y: labels 0/1.
        params: the hyper-parameters.
        sigmoid: the link used in the gradient: the exact sigmoid by default;
            ``params.sigmoid`` reproduces the protocol's approximation.
        keep_epoch: keep the weights of this epoch (1-based, at most ``params.epochs``)
            instead of the best one: exactly ``keep_epoch`` epochs run, on the same split and
            orders, with no early stopping. Compares two runs at the same epoch, e.g. the
            exact-sigmoid reference at the epoch a run with the approximation kept.

    Returns:
        The :class:`PlainTraining`.
    """
    features = np.asarray(x, dtype=np.float64)
    labels = np.asarray(y, dtype=np.float64)
    n = features.shape[0]
    if features.ndim != 2 or labels.shape != (n,):
        raise ValidationError("x must be (n, k) and y (n,)")
    link = sigmoid or logistic
    if keep_epoch is not None and not 1 <= keep_epoch <= params.epochs:
        raise ValidationError(f"keep_epoch must be in 1..{params.epochs}, not {keep_epoch}")
    last_epoch = params.epochs if keep_epoch is None else keep_epoch
    standard = standardise(features)
    design = np.hstack([np.ones((n, 1)), standard.z])
    train_rows, valid_rows = split_rows(n, params.validation, params.seed)
    w = np.zeros(design.shape[1])
    decay = np.full(design.shape[1], params.l2)
    decay[0] = 0.0
    history: list[FloatArray] = []
    losses: list[float] = []
    seconds: list[float] = []
    for epoch in range(1, last_epoch + 1):
        started = time.perf_counter()
        order = epoch_order(train_rows, params.seed, epoch)
        for start in range(0, len(order), params.batch_size):
            rows = order[start : start + params.batch_size]
            xb = design[rows]
            delta = link(xb @ w) - labels[rows]
            w = w - params.learning_rate * (xb.T @ delta / len(rows) + decay * w)
        history.append(w.copy())
        if len(valid_rows):
            losses.append(taylor_loss(design[valid_rows] @ w, labels[valid_rows]))
        seconds.append(time.perf_counter() - started)
        if keep_epoch is None and losses and should_stop(losses, params.patience):
            break
    if keep_epoch is not None:
        best = keep_epoch - 1
    else:
        best = int(np.argmin(losses)) if losses else len(history) - 1
    chosen = history[best]
    weights, correction = fold(chosen[1:], standard.mean, standard.scale)
    return PlainTraining(
        intercept=float(chosen[0]) - correction,
        weights=weights,
        losses=tuple(losses),
        epochs_run=len(history),
        best_epoch=best + 1,
        seconds=tuple(seconds),
    )
