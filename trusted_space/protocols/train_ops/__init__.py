"""The provider and operator sides of joint training: the operations other nodes call.

The flow, what each party learns, and the bank's driver are in
:mod:`trusted_space.protocols.train`; the two-party arithmetic in
:mod:`trusted_space.protocols.train_mpc`. Here:

- the operator's **dealer** (``train.deal``, :func:`register_train_dealer`): each party's
  32-byte seed, dealt once per party, and the compute party's derived material, each batch of
  each epoch dealt once (the dealt record is written to the operator's store before the bytes
  leave; the seeds live in memory only, so after a restart the training is refused, never
  re-dealt). Only the bank can open a dealer session, only the compute party fetches derived
  material; the dealer never sees a row, a schedule or an opening.
- the **provider** operations (:func:`register_train`): ``train.open`` (the spec and the cohort,
  nothing read), ``train.epoch`` (``authorize_use`` for that epoch *before* anything is read;
  at epoch 1 a sharing provider reads its columns and splits them ``(X - r, r)``: the seed of
  ``r`` to the compute party (``train.share``), ``X - r`` back to the bank in parts
  (``train.fetch``); the compute party reads its own and starts the epoch's program),
  ``train.step`` (the compute party's rounds), ``train.reveal`` / ``train.weights`` /
  ``train.finish`` (the release the model mode allows, and the ``train.model`` ledger entry),
  ``train.abort``.

Every header value comes from another node and is checked; a session belongs to the bank that
opened it (a sharing provider or the compute party addresses it by naming the bank, and must be
a party of it). The compute party refuses an epoch's rounds before that epoch's use was allowed
here, and refuses to reveal twice.

Layout: :mod:`.dealer` (the operator's dealer), :mod:`.provider` (the providers' operations).
"""

from __future__ import annotations

from trusted_space.protocols.train_ops.dealer import DEALER_NAMESPACE, register_train_dealer
from trusted_space.protocols.train_ops.provider import TRAIN_OPERATIONS, register_train

__all__ = ["DEALER_NAMESPACE", "TRAIN_OPERATIONS", "register_train", "register_train_dealer"]
