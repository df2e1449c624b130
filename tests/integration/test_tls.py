"""A TLS space of real processes: HTTPS between nodes, client certificates required.

One small space (operator, a provider, a consumer) with ``tls = true`` and ``client_certs =
true``: its start-up already needs HTTPS with client certificates on every link (readiness,
admission, the provider's catalog push to the operator); the tests then check what a stranger
meets — plain HTTP, a wrong CA, no client certificate — is refused at the handshake.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from connectors.cli._common import admin_client
from connectors.common.settings import load_settings
from connectors.common.tls import client_context
from connectors.spaces.certs import CertificateAuthority
from connectors.spaces.space import RunningSpace, load_config, up
from trusted_space.errors import NotReadyError

from .conftest import cli

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "space"


@pytest.fixture(scope="module")
def tls_space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSpace]:
    root = tmp_path_factory.mktemp("tls-space")
    (root / "space.toml").write_text(
        f"""
[space]
name = "tls"
dir = "nodes"
base_port = 0
tls = true
client_certs = true

[[node]]
name = "city-centre"
roles = ["operator"]

[[node]]
name = "tax-bureau"
roles = ["provider"]
[[node.dataset]]
file = "{EXAMPLE / "datasets" / "tax.json"}"
source = {{ kind = "csv", path = "{EXAMPLE / "data" / "tax.csv"}" }}
offers = ["{EXAMPLE / "policies" / "tax-score.json"}"]

[[node]]
name = "bank-a"
roles = ["consumer"]
""",
        encoding="utf-8",
    )
    with up(load_config(root / "space.toml"), timeout=60) as running:
        yield running


def test_nodes_talk_https_with_client_certificates(tls_space: RunningSpace) -> None:
    bank = tls_space["bank-a"]
    assert all(url.startswith("https://127.0.0.1:") for url in tls_space.urls.values())
    # The bank's node fetches the federated catalog from the operator (a signed HTTPS call with
    # its client certificate); it holds the dataset the tax bureau pushed there the same way.
    with bank.admin() as staff:
        rows = staff.get("/management/catalog")["rows"]
    assert "tax-bureau" in {row["provider"] for row in rows}
    with httpx.Client(verify=bank.tls) as http:
        assert http.get(tls_space.operator.url + "/readyz").status_code == 200


def test_plain_http_to_the_tls_port_fails(tls_space: RunningSpace) -> None:
    plain = tls_space.operator.url.replace("https://", "http://")
    with httpx.Client(timeout=5) as http, pytest.raises(httpx.TransportError):
        http.get(plain + "/healthz")


def test_a_client_trusting_another_ca_is_refused(tls_space: RunningSpace, tmp_path: Path) -> None:
    other = CertificateAuthority.open(tmp_path, "another CA")
    context = ssl.create_default_context(cafile=str(other.cert_file))
    with httpx.Client(verify=context, timeout=5) as http, pytest.raises(httpx.ConnectError) as err:
        http.get(tls_space.operator.url + "/healthz")
    assert "CERTIFICATE_VERIFY_FAILED" in str(err.value)


def test_a_client_without_a_certificate_is_refused(tls_space: RunningSpace) -> None:
    settings = load_settings(tls_space.operator.dir)
    trusting = ssl.create_default_context(cafile=settings.tls_ca)  # right CA, no client cert
    with httpx.Client(verify=trusting, timeout=5) as http, pytest.raises(httpx.TransportError):
        http.get(tls_space.operator.url + "/healthz")
    # The same client with a certificate from the space's CA gets in.
    with httpx.Client(verify=client_context(settings), timeout=5) as http:
        assert http.get(tls_space.operator.url + "/healthz").status_code == 200


def test_the_staff_cli_reaches_its_tls_node_from_the_node_directory(
    tls_space: RunningSpace,
) -> None:
    # `--node-dir`: URL, token and TLS settings (CA, client certificate) from the node's files;
    # the node then has its checkpoint cosigned by the operator's witness over mutual TLS.
    tax = tls_space["tax-bureau"]
    done = cli("ledger", "checkpoint", "--node-dir", str(tax.dir))
    assert done.returncode == 0, done.stderr
    assert f"— {tls_space.operator.name}/witness " in done.stdout  # the witness's cosignature
    # With only `--node URL` and the token, the staff client trusts no private CA: refused.
    with (
        admin_client(tax.url, None, tax.layout.admin_token) as staff,
        pytest.raises(NotReadyError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        staff.get("/identity")
