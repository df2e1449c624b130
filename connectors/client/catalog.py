"""The space's catalog and negotiations, from a client's side.

:func:`fetch_catalog` reads the operator's federated catalog (``POST /operator/catalog/request``)
or one provider's own (``POST /catalog/request``), anonymously (only open datasets) or signed as
a member; :func:`catalog_rows` flattens it to one row per dataset; :func:`follow_negotiation`
starts a negotiation at the consumer's node (staff API) and follows it to a final state.

The functions take their HTTP clients as arguments, so they can be tested without a server.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from connectors.client.http import AdminClient, SignedClient, raise_for_problem
from trusted_space.catalog import TS_NAMESPACE, Table
from trusted_space.errors import NotReadyError, RemoteError, ValidationError

__all__ = [
    "CATALOG_REQUEST",
    "FINAL_STATES",
    "catalog_rows",
    "declared_ranges",
    "fetch_catalog",
    "follow_negotiation",
]


CATALOG_REQUEST: dict[str, Any] = {
    "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
    "@type": "CatalogRequestMessage",
    "filter": [],
}


FINAL_STATES = frozenset({"FINALIZED", "TERMINATED"})


def fetch_catalog(
    base_url: str,
    *,
    federated: bool,
    signer: SignedClient | None = None,
    audience: str | None = None,
    transport: httpx.BaseTransport | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Ask ``base_url`` for its catalog: the operator's federated one, or a node's own.

    Args:
        base_url: the operator's or the node's URL.
        federated: ``True`` for ``/operator/catalog/request``, ``False`` for ``/catalog/request``.
        signer: sign the request as this member (``audience`` is then the receiver's id);
            ``None`` asks anonymously.
        audience: the receiving participant's id (with ``signer``).
        transport: an httpx transport (tests).
        timeout: seconds.

    Raises:
        RemoteError: the node refused; NotReadyError: it cannot be reached.
    """
    url = base_url.rstrip("/") + ("/operator/catalog/request" if federated else "/catalog/request")
    if signer is not None:
        if audience is None:
            raise ValueError("a signed catalog request needs the receiver's participant id")
        response = signer.request("POST", url, audience=audience, json_body=CATALOG_REQUEST)
    else:
        try:
            with httpx.Client(timeout=timeout, transport=transport) as http:
                response = http.post(url, json=CATALOG_REQUEST)
        except httpx.TransportError as exc:
            raise NotReadyError(f"cannot reach {url}: {exc}") from exc
        raise_for_problem(response, base_url)
    doc = response.json()
    if not isinstance(doc, dict):
        raise RemoteError(
            base_url, response.status_code, {"detail": "the catalog is not an object"}
        )
    return doc


def _as_list(value: Any) -> list[Mapping[str, Any]]:
    if isinstance(value, Mapping):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, Mapping)]
    return []


def catalog_rows(catalog: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per dataset of a catalog (nested provider catalogs included), sorted."""
    rows: list[dict[str, Any]] = []
    for sub in [catalog, *_as_list(catalog.get("catalog"))]:
        provider = str(sub.get("participantId", ""))
        for ds in _as_list(sub.get("dataset")):
            rows.append(
                {
                    "provider": str(ds.get(TS_NAMESPACE + "owner", provider)),
                    "dataset": str(ds.get("@id", "")),
                    "title": str(ds.get("dct:title", "")),
                    "tier": ds.get(TS_NAMESPACE + "tier"),
                    "maxGrade": ds.get(TS_NAMESPACE + "maxGrade"),
                    "offers": [str(o.get("@id")) for o in _as_list(ds.get("hasPolicy"))],
                }
            )
    return sorted(rows, key=lambda r: (r["provider"], r["dataset"]))


def declared_ranges(
    catalog: Mapping[str, Any], datasets: Mapping[str, str]
) -> dict[str, dict[str, float]]:
    """Each named dataset's declared column ranges (field ``bound``), by its owner.

    ``datasets``: owner → dataset id (a score query's). A dataset the catalog does not show, or
    whose table does not parse, contributes nothing (its owner then refuses a scale that is not
    its catalog's, naming the column).
    """
    wanted = {(owner, ds) for owner, ds in datasets.items()}
    out: dict[str, dict[str, float]] = {}
    for sub in [catalog, *_as_list(catalog.get("catalog"))]:
        provider = str(sub.get("participantId", ""))
        for ds in _as_list(sub.get("dataset")):
            owner = str(ds.get(TS_NAMESPACE + "owner", provider))
            if (owner, str(ds.get("@id", ""))) not in wanted:
                continue
            try:
                table = Table.from_json(ds.get(TS_NAMESPACE + "table"))
            except ValidationError:
                continue
            out[owner] = {f.name: f.bound for f in table.fields if f.bound is not None}
    return out


def follow_negotiation(
    client: AdminClient,
    provider: str,
    dataset: str,
    offer: str | None = None,
    *,
    wait: bool = True,
    timeout: float = 60.0,
    poll: float = 0.25,
    on_state: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Start a negotiation at the consumer node and (with ``wait``) follow it to its end.

    Returns:
        The last view of the negotiation (``state``, ``agreementId``, ...). After ``timeout``
        seconds it is returned as it is, not final.

    Raises:
        RemoteError: the consumer node refused (a provider's refusal is inside ``problem``).
        NotReadyError: the consumer node cannot be reached.
    """
    body: dict[str, Any] = {"provider": provider, "datasetId": dataset}
    if offer is not None:
        body["offerId"] = offer
    view: dict[str, Any] = client.post("/management/negotiations", body)
    if on_state is not None:
        on_state(view["state"])
    deadline = time.monotonic() + timeout
    while wait and view["state"] not in FINAL_STATES and time.monotonic() < deadline:
        sleep(poll)
        view = client.get(f"/management/negotiations/{view['id']}")
        if on_state is not None:
            on_state(view["state"])
    return view
