"""TLS for a node: the context ``node serve`` listens with, and the one its clients trust.

The threat model relies on confidential, authenticated links between institutions. A node gets
them either from a reverse proxy that terminates TLS in front of it (``public_url`` is then the
proxy's ``https`` URL) or from ``node serve`` itself, with four settings (``node.toml``):

- ``tls_cert`` / ``tls_key``: the certificate chain and key the node presents;
- ``tls_client_ca``: mutual TLS — a client that presents no certificate issued by this CA is
  refused during the handshake, before any HTTP is read (the request tokens still decide who a
  member is; the client certificate only keeps strangers off the port);
- ``tls_ca``: the CA bundle the node trusts for ``https`` peers, in place of the system's store.

The client side presents the node's own certificate (so a peer that requires client certificates
accepts it: issue it for both ``serverAuth`` and ``clientAuth``). Both contexts take TLS 1.2 at
least and verify host names; a file that cannot be read or parsed is a :class:`ValidationError`
naming the setting, at start-up rather than at the first handshake.

Contexts are cached per set of files: one built from the system store costs tens of
milliseconds (docs/decisions.md 42), and a node builds clients often. Replaced certificate files
take effect at the next start.
"""

from __future__ import annotations

import ssl
from functools import lru_cache
from pathlib import Path

from connectors.common.settings import NodeSettings
from trusted_space.errors import ValidationError

__all__ = ["client_context", "server_context"]


def _path(settings: NodeSettings, name: str) -> str | None:
    found = settings.file(str(getattr(settings, name)))
    if found is not None and not found.is_file():
        raise ValidationError(f"{name}: no such file {found}")
    return None if found is None else str(found)


def server_context(settings: NodeSettings) -> ssl.SSLContext | None:
    """The context ``node serve`` listens with, or ``None`` when the node speaks plain HTTP.

    Raises:
        ValidationError: a TLS file is missing or not a usable certificate, key or CA.
    """
    cert, key = _path(settings, "tls_cert"), _path(settings, "tls_key")
    if cert is None or key is None:
        return None
    client_ca = _path(settings, "tls_client_ca")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, cert, key)
    if client_ca is not None:
        _load_ca(context, client_ca, "tls_client_ca")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(settings: NodeSettings) -> ssl.SSLContext:
    """The context the node's clients use: peers checked against ``tls_ca``, own cert presented.

    Raises:
        ValidationError: a TLS file is missing or not a usable certificate, key or CA.
    """
    return _client_context(
        _path(settings, "tls_ca"), _path(settings, "tls_cert"), _path(settings, "tls_key")
    )


@lru_cache(maxsize=32)
def _client_context(ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext:
    # With a bundle, only that bundle: a private space's peers are not vouched for by every
    # public CA of the system store.
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        raise ValidationError(f"tls_ca: cannot load the CA bundle {ca} ({exc})") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        _load_chain(context, cert, key)
    return context


def _load_chain(context: ssl.SSLContext, cert: str, key: str) -> None:
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ValidationError(
            f"tls_cert/tls_key: cannot load {Path(cert).name} with {Path(key).name} ({exc})"
        ) from exc


def _load_ca(context: ssl.SSLContext, ca: str, name: str) -> None:
    try:
        context.load_verify_locations(cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        raise ValidationError(f"{name}: cannot load the CA bundle {ca} ({exc})") from exc
