"""A node that does not accept a connection is noticed in seconds, whatever the read timeout."""

from __future__ import annotations

from connectors.client.http import CONNECT_TIMEOUT, SignedClient
from trusted_space.keys import SigningKey


def test_connect_timeout_is_short_and_read_timeout_is_the_callers() -> None:
    with SignedClient("bank-a", SigningKey.generate(), lambda: None, timeout=300) as client:
        timeout = client._http.timeout
    assert (timeout.connect, timeout.read) == (CONNECT_TIMEOUT, 300)
    with SignedClient("bank-a", SigningKey.generate(), lambda: None, timeout=2) as quick:
        assert quick._http.timeout.connect == 2  # never longer than the whole call may take
