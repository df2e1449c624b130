"""How a real node treats the connections its peers keep open between calls."""

from __future__ import annotations

import select
import socket
import time

import httpx
import pytest

from connectors.client.http import CLIENT_KEEP_ALIVE, SERVER_KEEP_ALIVE
from connectors.spaces.space import RunningSpace

pytestmark = pytest.mark.integration


def _get(sock: socket.socket, path: str) -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: node\r\n\r\n".encode("ascii"))
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head.split(b"\r\n", 1)[0]


def test_a_node_keeps_an_idle_connection_open_longer_than_a_client_reuses_one(
    space: RunningSpace,
) -> None:
    # With equal limits a call could go out on a connection the node is closing at that very
    # moment and fail with "Server disconnected without sending a response".
    assert SERVER_KEEP_ALIVE > CLIENT_KEEP_ALIVE
    url = httpx.URL(space["tax-bureau"].url)
    assert url.scheme == "http" and url.port is not None
    with socket.create_connection((url.host, url.port), timeout=10) as sock:
        assert _get(sock, "/healthz").startswith(b"HTTP/1.1 200")
        time.sleep(CLIENT_KEEP_ALIVE + 1.0)  # past the moment every client drops it
        readable, _, _ = select.select([sock], [], [], 0)
        assert not readable  # the node has not closed it (a closed socket reads as EOF)
        assert _get(sock, "/healthz").startswith(b"HTTP/1.1 200")  # and it still serves
