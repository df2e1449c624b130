"""Joint training: vertical logistic regression that no party sees the inputs of.

The bank (the analyst) holds the label and some features; providers hold other features of the
same entities. Training runs as two-party secure SGD over additive shares
(:mod:`trusted_space.protocols.train_mpc`) between **the bank** (party 0) and **one designated
provider** (party 1, ``computeParty``), with the operator as the dealer of correlated randomness
— never a compute party. Every other provider secret-shares its aligned feature block to the two
compute parties once. Only the final weights are revealed, and only to whom the model mode says:

- ``analyst-held``: to the bank (the model file holds every party's weights);
- ``party-held``: each party learns its own weights (the bank also the intercept); a provider
  stores its weights under the model id
  (:func:`~trusted_space.protocols.score.store_party_weights`), where party-held scores load
  them.

Flow (analyst = bank ``B``, compute party ``C``, other providers ``P``, operator ``O``)::

    B ─align.* (PSI, kind train)──────────────▶ every provider      use #0: the alignment
    B ─train.deal {op: seed}──────────────────▶ O                   B's 32-byte seed
    B ─train.open (cohort ids, in parts)──────▶ every provider      the spec; nothing read
    per epoch e = 1..E:
      B ─train.epoch {epoch e}────────────────▶ every provider      authorize_use → receipt
          e = 1, at P: read X_P, draw seed s ─train.share (s)─▶ C;  reply to B: X_P - r(s)
          e = 1, at C: read X_C; C ─train.deal─▶ O (its seed, then derived material per epoch)
      B ⇄ train.step ⇄ C                         two opening rounds per call (train_mpc)
    B ─train.reveal──▶ C                         C's share of the weights the mode releases
         party-held: C ─train.weights─▶ P (C's share of P's weights)
    B ─train.finish──▶ every provider            (party-held: B's share of its weights) the
                                                 provider records train.model (and stores)

Enforcement: a provider calls :func:`~trusted_space.enforcement.authorize_use` (kind ``train``,
protocol ``additive``, the cohort as entities) at alignment and again at the start of **every
epoch** — each epoch's use is a ``query.use`` entry (query id ``<query>#epoch-<e>``) whose
receipt the bank checks; a refusal stops the training. Features are read only inside epoch 1's
use, after it is allowed. The compute party refuses to run an epoch it has not authorised.

What each party learns: the bank — each provider's cohort membership (PSI), one held-out loss
per epoch, and the released weights; a provider — the cohort (its own entities that are
trained on), the number of epochs, the hyper-parameters, and in party-held mode its weights; the
compute party additionally the batch schedule (row positions, no label); the operator — shapes.
No feature block, label, logit, gradient or intermediate weight is ever opened
(``docs/protocols.md``, "Training").

The plaintext reference (:func:`train_plaintext`) runs the same schedule (held-out split, epoch
orders, zero initialisation, update rule, early stopping on the same loss) in float64 numpy, with
the exact sigmoid by default or the protocol's approximation.

The operations the providers and the operator serve are in
:mod:`trusted_space.protocols.train_ops` (``register_train``, ``register_train_dealer``).

Layout: :mod:`.reference` (the schedule and the plaintext reference), :mod:`.common` (digests,
dealer shapes, the weight check), :mod:`.bank` (:func:`run_train`). The query, parameters and
result models are in :mod:`trusted_space.queries.train` ; the secure
arithmetic is in :mod:`trusted_space.protocols.train_mpc`.
"""

from __future__ import annotations

from trusted_space.protocols.train.bank import run_train
from trusted_space.protocols.train.common import (
    check_weights,
    dealer_spec,
    model_sha256,
    weights_sha256,
)
from trusted_space.protocols.train.reference import (
    PlainTraining,
    auc,
    epoch_order,
    log_loss,
    split_rows,
    taylor_loss,
    train_plaintext,
)

__all__ = [
    "PlainTraining",
    "auc",
    "check_weights",
    "dealer_spec",
    "epoch_order",
    "log_loss",
    "model_sha256",
    "run_train",
    "split_rows",
    "taylor_loss",
    "train_plaintext",
    "weights_sha256",
]
