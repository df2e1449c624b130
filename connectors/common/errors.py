"""The connector layer's place in the one exception family, and the problem media type.

Every error the node, the clients and the tools raise is a
:class:`~trusted_space.errors.TrustedSpaceError`; the family, and the one table that gives each
class its HTTP status and problem slug, live in :mod:`trusted_space.errors`, so the HTTP edge
and the in-memory transport answer alike. The connector layer raises the core classes (a
peer's error answer is a :class:`~trusted_space.errors.RemoteError`, a policy refusal a
:class:`~trusted_space.errors.RefusedError`, a node that cannot serve yet a
:class:`~trusted_space.errors.NotReadyError`) and adds only leaves of its own for the client and
the tools, which never cross the wire; the local spaces' two errors hang under the core classes
they specialise::

    TrustedSpaceError                  (trusted_space.errors: the tree and its table)
     ├── RefusedError                  403 policy-refused: a usage policy said no (with trace)
     ├── RemoteError                   4xx peer-refused / 502 peer-error: another node refused
     │                                 or failed
     ├── NotReadyError                 503 not-ready: not admitted, no operator, peer unreachable
     ├── ValidationError
     │    └── SpaceConfigError         a space config is invalid (connectors.spaces.space)
     ├── ...                           the core's other errors
     ├── SpaceError                    starting or stopping a space failed (connectors.spaces.space)
     └── ConnectorError                a client- or tool-side failure (never answered over HTTP)
          ├── QueryFailed              a submitted query ended failed (connectors.client.analyst)
          └── LocalSpaceError          a local run could not be set up (connectors.spaces.local)

How an error becomes an HTTP answer is the node's business (:mod:`connectors.node.problems`,
from the core's table); a client only raises and reads them, so it needs no web framework.
"""

from __future__ import annotations

from trusted_space.errors import TrustedSpaceError

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "ConnectorError",
]

PROBLEM_MEDIA_TYPE = "application/problem+json"


class ConnectorError(TrustedSpaceError):
    """Base class of the client- and tool-side errors of the connector layer."""
