"""The framework every node runs: identity, catalog, policies, contracts, consent, ledger, store.

``trusted_space`` never imports FastAPI, httpx or pydantic: the connector layer puts it on the
network. Every error is a :class:`TrustedSpaceError` (see :mod:`trusted_space.errors`); a refused
policy decision is not an error but a :class:`trusted_space.policy.Decision` with its trace.
"""

from trusted_space import (
    catalog,
    compute,
    consent,
    contracts,
    dsp,
    errors,
    events,
    identity,
    keys,
    ledger,
    merkle,
    metering,
    notes,
    policy,
    queries,
    store,
    transport,
    uscc,
)
from trusted_space.errors import (
    ConflictError,
    GradeFloorError,
    IllegalTransitionError,
    LimitExceededError,
    NotFoundError,
    RefusedError,
    SchemaValidationError,
    StoreError,
    TrustedSpaceError,
    ValidationError,
    VerificationError,
)

__all__ = [
    "ConflictError",
    "GradeFloorError",
    "IllegalTransitionError",
    "LimitExceededError",
    "NotFoundError",
    "RefusedError",
    "SchemaValidationError",
    "StoreError",
    "TrustedSpaceError",
    "ValidationError",
    "VerificationError",
    "catalog",
    "compute",
    "consent",
    "contracts",
    "dsp",
    "errors",
    "events",
    "identity",
    "keys",
    "ledger",
    "merkle",
    "metering",
    "notes",
    "policy",
    "queries",
    "store",
    "transport",
    "uscc",
]
