"""The joint score flow: provider operations and the analyst's driver, for every protocol.

Message flow (details per protocol in docs/protocols.md)::

    analyst ──aggregate.open──────────────▶ operator     codec, contributors, block sizes, key
    analyst ──score.open───────────────────▶ provider P   query spec for P, public material
    analyst ──score.entities (blocks)──────▶ P            entity ids, ≤ 262,144 per call
    analyst ──score.run────────────────────▶ P            (analyst-held) encrypted weights
        P: authorize_use → lookup → partial per block ──aggregate.add──▶ operator
    analyst ◀──────────────────────────────── P            receipt, missing ids (never a partial)
    analyst ⇄ score.beaver per block ⇄ P                   (additive analyst-held only)
    analyst ──aggregate.take per block─────▶ operator     ◀── the sum over all providers, once

The provider enforces before it reads: :func:`trusted_space.enforcement.authorize_use` runs in
``score.run`` with the authenticated sender as analyst and the *whole* entity list (consent per
entity, the ``query.use`` digest), and only then is :class:`~trusted_space.compute.DataAccess`
touched. Its partial goes to the operator, never to the analyst; its reply carries its receipt,
the count of entities it does not hold and a bitmap of them (one bit per entity, query order),
and (additive) a 32-byte mask seed.

Missing entities (not held, or a null in a used column): ``fail`` refuses the query listing them
(a :class:`RefusedError` with a ``missing`` trace step, after the use was recorded — looking them
up *is* a use); ``impute`` fills each such cell with the column's published ``imputeDefault`` and
refuses if a needed column has none (never a silent zero).

Party-held weights live in the provider's store (namespace ``model``, keyed by owner and model
id), put there with :func:`store_party_weights` after joint training; only their owner scores
with them, and ``query.use`` records the model's id and digest.

Large vectors travel in blocks (:data:`~trusted_space.protocols._common.DEFAULT_BLOCK_ROWS`
entities; no message above 64 MiB), so a million entities never need one giant message.

Layout: :mod:`.weights` (party-held weights, owned), :mod:`.approval` (submitted model parts
checked against the provider's model rules and decided by its staff), :mod:`.wire` (the
``score.*`` headers as typed messages, each with ``to_header``/``from_header``, and the wire
limits), :mod:`.provider` (the ``score.*`` operations), :mod:`.analyst` (:func:`run_score`,
PSI alignment, receipt checks), :mod:`.serving` (:func:`serve_batch`: several small requests in
one run, each its own use, under :class:`StandingKeys`).
"""

from __future__ import annotations

from trusted_space.protocols.score.analyst import (
    BLOCKS_IN_FLIGHT,
    PSI_POOL_MIN_IDS,
    PSI_WORKERS_MAX,
    Aligner,
    check_use_receipt,
    psi_aligner,
    run_score,
)
from trusted_space.protocols.score.approval import (
    SENT_NAMESPACE,
    SUBMISSION_NAMESPACE,
    Submission,
    decide_submission,
    load_submission,
    model_status,
    register_approval,
    send_model,
    submissions,
    submit_model,
)
from trusted_space.protocols.score.provider import (
    ENTITY_CHUNK,
    MAX_ENTITIES,
    register_provider,
)
from trusted_space.protocols.score.serving import (
    MAX_SERVED_ENTITIES,
    ServedOutcome,
    ServedRequest,
    StandingKeys,
    serve_batch,
)
from trusted_space.protocols.score.weights import (
    MODEL_NAMESPACE,
    PartyModel,
    clean_weights,
    load_party_weights,
    model_key,
    party_models,
    store_party_weights,
    weight_stats,
    weights_digest,
)

__all__ = [
    "BLOCKS_IN_FLIGHT",
    "ENTITY_CHUNK",
    "MAX_ENTITIES",
    "MAX_SERVED_ENTITIES",
    "MODEL_NAMESPACE",
    "PSI_POOL_MIN_IDS",
    "PSI_WORKERS_MAX",
    "SENT_NAMESPACE",
    "SUBMISSION_NAMESPACE",
    "Aligner",
    "PartyModel",
    "ServedOutcome",
    "ServedRequest",
    "StandingKeys",
    "Submission",
    "check_use_receipt",
    "clean_weights",
    "decide_submission",
    "load_party_weights",
    "load_submission",
    "model_status",
    "party_models",
    "model_key",
    "psi_aligner",
    "register_approval",
    "register_provider",
    "run_score",
    "send_model",
    "serve_batch",
    "store_party_weights",
    "submissions",
    "submit_model",
    "weight_stats",
    "weights_digest",
]
