"""``trusted-space local train``: joint training over local files, through a throw-away space.

A :class:`~connectors.spaces.local.LocalSpace` whose first party holds the label, every other
file a provider; all numeric columns but the id (and the label) are features unless named. The
result's ``model`` is a model file in :mod:`trusted_space.queries.score` format (analyst-held),
which
``trusted-space local score`` takes as it is.

Raw magnitudes (analyst-held): a party whose columns are not already on a standard scale (some
``|mean| > 1``, ``sd > 4`` or ``|x| > STANDARDISE_ABOVE``) standardises all of them
(``(x - mean) / sd``, computed from its own file; a constant column is only centred) before its
node sees them, the training runs on the standardised values, and the released model is folded
back to the raw scale (``w / sd`` per column, ``Σ w·mean / sd`` out of the intercept), so it
scores the raw files. Here every party is the user's own file, so the means and scales stay in
the user's process; a party whose columns are already standard is left as it is. Party-held
training keeps each party's weights at its node, on the values its node holds, so it
standardises nothing (values beyond :data:`MAX_FEATURE_BOUND` are refused).
"""

from __future__ import annotations

import csv
import math
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from connectors.client.analyst import QueryProgress
from connectors.node.sources import SourceSpec, open_source
from connectors.spaces.local import LOCAL_PURPOSE, LocalParty, LocalSpace
from trusted_space.errors import ValidationError
from trusted_space.queries.score import Link, Model
from trusted_space.queries.train import TrainParams

__all__ = [
    "MAX_FEATURE_BOUND",
    "STANDARDISE_ABOVE",
    "feature_bound",
    "file_features",
    "fold_model",
    "local_training",
    "standardise_party",
    "train_local",
]


MAX_FEATURE_BOUND: Final = 65536.0
"""The largest ``|x|`` a training accepts (standardise features beyond it)."""

STANDARDISE_ABOVE: Final = 64.0
"""A column beyond ``±64`` is not on a standard scale (nor one with ``|mean| > 1``, ``sd > 4``)."""


def _standard(values: Mapping[str, np.ndarray[Any, Any]], columns: Sequence[str]) -> bool:
    """Whether every column already is on a standard scale (|mean| ≤ 1, sd ≤ 4, |x| ≤ 64)."""
    for c in columns:
        finite = values[c][np.isfinite(values[c])]
        if finite.size and (
            abs(float(np.mean(finite))) > 1.0
            or float(np.std(finite)) > 4.0
            or float(np.max(np.abs(finite))) > STANDARDISE_ABOVE
        ):
            return False
    return True


def standardise_party(
    party: LocalParty, id_column: str, columns: Sequence[str], keep: Sequence[str], out_dir: Path
) -> tuple[LocalParty, dict[str, tuple[float, float]]]:
    """Write the party's file with its columns standardised; return it and the statistics.

    ``columns``: the features; unless all of them are already on a standard scale, every one
    becomes ``(x - mean) / sd`` (sd 1 for a constant column: centred only; SGD needs centred
    columns), else all are copied as they are, and so is ``keep`` (the label). Missing cells stay
    empty. Returns the new party (same name, a CSV in ``out_dir``) and column → (mean, sd) of the
    standardised columns.
    """
    source = open_source(SourceSpec(party.kind, str(party.path)))
    names = [*columns, *keep]
    keys: list[str] = []
    parts: dict[str, list[np.ndarray[Any, Any]]] = {c: [] for c in names}
    for chunk in source.chunks(id_column, names):
        keys.extend(chunk.keys)
        for c in names:
            parts[c].append(np.asarray(chunk.columns[c], dtype=np.float64))
    values = {c: np.concatenate(v) if v else np.zeros(0) for c, v in parts.items()}
    stats: dict[str, tuple[float, float]] = {}
    for c in columns if not _standard(values, columns) else ():
        x = values[c]
        finite = x[~np.isnan(x)]
        if not finite.size:
            continue
        mean, sd = float(np.mean(finite)), float(np.std(finite))
        sd = sd if sd > 0 else 1.0
        stats[c] = (mean, sd)
        values[c] = (x - mean) / sd
    path = out_dir / f"{party.path.stem}.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([id_column, *names])
        for i, key in enumerate(keys):
            writer.writerow(
                [
                    key,
                    *("" if math.isnan(values[c][i]) else repr(float(values[c][i])) for c in names),
                ]
            )
    return LocalParty(party.name, path), stats


def fold_model(
    model: Mapping[str, Any], stats: Mapping[str, Mapping[str, tuple[float, float]]]
) -> dict[str, Any]:
    """A model trained on standardised columns, expressed on the raw scale.

    ``w·(x - m)/s = (w/s)·x - w·m/s``: each standardised column's weight is divided by its
    scale and ``w·m/s`` leaves the intercept.
    """
    weights = {p: dict(cols) for p, cols in model["weights"].items()}
    intercept = float(model["intercept"])
    for party, columns in stats.items():
        for column, (mean, sd) in columns.items():
            if column in weights.get(party, {}):
                w = float(weights[party][column])
                weights[party][column] = w / sd
                intercept -= w * mean / sd
    return {**model, "intercept": intercept, "weights": weights}


def file_features(party: LocalParty, exclude: Sequence[str]) -> tuple[str, ...]:
    """Every column of the party's file except ``exclude`` (the id, the label)."""
    names = open_source(SourceSpec(party.kind, str(party.path))).column_names()
    return tuple(c for c in names if c not in set(exclude))


def feature_bound(
    parties: Sequence[LocalParty], id_column: str, features: Mapping[str, Sequence[str]]
) -> float:
    """A power of two above every feature value of the files (the query's ``featureBound``).

    Raises:
        ValidationError: a value beyond :data:`MAX_FEATURE_BOUND` (standardise it first).
    """
    worst = 1.0
    for p in parties:
        columns = list(features.get(p.name, ()))
        if not columns:
            continue
        source = open_source(SourceSpec(p.kind, str(p.path)))
        for chunk in source.chunks(id_column, columns):
            for c in columns:
                values = chunk.columns[c]
                if len(values):
                    worst = max(worst, float(abs(values).max()))
    bound = float(2 ** math.ceil(math.log2(worst * 1.01)))
    if bound > MAX_FEATURE_BOUND:
        raise ValidationError(
            f"feature values reach {worst:g}: standardise them (at most {MAX_FEATURE_BOUND:g})"
        )
    return bound


def local_training(
    parties: Sequence[LocalParty],
    id_column: str,
    label: str,
    *,
    features: Mapping[str, Sequence[str]] | None = None,
    standardise: bool = False,
    **kw: Any,
) -> LocalSpace:
    """A :class:`LocalSpace` set up for training: the first party holds ``label``.

    Each party publishes its feature columns (``features[name]``, default every column but the
    id and the label) and the bank also its label; offers permit ``score`` and ``train``.
    ``standardise``: each party first standardises its own large columns
    (:func:`standardise_party`); :func:`train_local` folds the model back to the raw scale.
    """
    if not parties:
        raise ValidationError("no parties")
    chosen: dict[str, tuple[str, ...]] = {}
    for i, p in enumerate(parties):
        given = (features or {}).get(p.name)
        cols = tuple(given) if given is not None else file_features(p, [id_column, label])
        if i == 0 and label in cols:
            raise ValidationError(f"--label {label!r} cannot also be a feature")
        chosen[p.name] = cols
    placeholder = Model(
        0.0,
        Link("logistic"),
        tuple((p, tuple((c, 0.0) for c in cols)) for p, cols in chosen.items() if cols),
    )
    stats: dict[str, dict[str, tuple[float, float]]] = {}
    if standardise:
        # Each party's standardised copy, in the work directory (removed with it, mode 0700).
        work = kw.get("work_dir")
        if work is None:
            work = Path(tempfile.mkdtemp(prefix="trusted-space-local-"))
            kw["work_dir"] = work
        out_dir = Path(work) / "standardised"
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        copies = []
        for i, p in enumerate(parties):
            copy, stats[p.name] = standardise_party(
                p, id_column, chosen[p.name], [label] if i == 0 else [], out_dir
            )
            copies.append(copy)
        parties = copies
    local = LocalSpace(parties, placeholder, id_column, label=label, kinds=("score", "train"), **kw)
    local.standardised = {p: s for p, s in stats.items() if s}
    return local


def train_local(
    local: LocalSpace,
    params: TrainParams,
    *,
    mode: str = "analyst-held",
    compute_party: str | None = None,
    model_id: str | None = None,
    progress: Callable[[QueryProgress], None] | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Train from the local space's bank node; returns the result JSON."""
    if local.label is None:
        raise ValidationError("the local space was not set up for training (no label)")
    bank = local.analyst.name
    features = {p.name: list(local.model.columns(p.name)) for p in local.parties}
    doc: dict[str, Any] = {
        "id": f"urn:uuid:{uuid.uuid4()}",
        "purpose": LOCAL_PURPOSE,
        "protocol": "additive",
        "mode": mode,
        "agreements": dict(local.agreements),
        "datasets": {p.name: p.dataset_id for p in local.parties},
        "features": features,
        "label": local.label,
        "entities": local.entities(),
        "idKind": local.id_kind,
        "missing": local.missing,
        "featureBound": feature_bound(local.parties, local.id_column, features),
        "params": params.to_json(),
    }
    if compute_party is not None:
        doc["computeParty"] = compute_party
    doc["modelId"] = model_id or f"{bank}-lr-{doc['id'].rsplit(':', 1)[-1][:8]}"
    if local.standardised and mode != "analyst-held":
        raise ValidationError("standardised columns are folded back in analyst-held mode only")
    with local.client(timeout=600.0) as client:
        view = client.submit_train(doc)
        result = client.wait(view["id"], progress=progress, timeout=timeout)
    if local.standardised and isinstance(result.get("model"), Mapping):
        result = {**result, "model": fold_model(result["model"], local.standardised)}
    return result
