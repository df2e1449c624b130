"""TLS settings and contexts: pairs that go together, files that must load, only the CA given."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from connectors.common.settings import NodeSettings
from connectors.common.tls import client_context, server_context
from connectors.spaces.certs import CertificateAuthority
from trusted_space.errors import ValidationError


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    """A CA in ``ca/`` and a node certificate from it (``tls/node.pem``, ``node.key``)."""
    (tmp_path / "ca").mkdir()
    authority = CertificateAuthority.open(tmp_path / "ca", "test CA")
    authority.issue("node", ["127.0.0.1"], tmp_path / "tls" / "node.pem", tmp_path / "node.key")
    return authority


def settings(directory: Path, **tls: str) -> NodeSettings:
    return NodeSettings(name="tax-bureau", roles=["provider"], dir=directory, **tls)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tls_cert": "tls/node.pem"}, "tls_cert and tls_key go together"),
        ({"tls_key": "node.key"}, "tls_cert and tls_key go together"),
        ({"tls_client_ca": "ca/ca.pem"}, "tls_client_ca (client certificates) needs tls_cert"),
    ],
)
def test_settings_refuse_half_a_tls_configuration(
    tmp_path: Path, values: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        settings(tmp_path, **values)


def test_a_node_with_a_certificate_is_reached_over_https(tmp_path: Path) -> None:
    assert settings(tmp_path).url == "http://127.0.0.1:8700"
    with_cert = settings(tmp_path, tls_cert="tls/node.pem", tls_key="node.key")
    assert with_cert.url == "https://127.0.0.1:8700"


def test_server_context_requires_client_certificates_only_when_asked(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    assert server_context(settings(tmp_path)) is None
    plain = server_context(settings(tmp_path, tls_cert="tls/node.pem", tls_key="node.key"))
    mutual = server_context(
        settings(tmp_path, tls_cert="tls/node.pem", tls_key="node.key", tls_client_ca="ca/ca.pem")
    )
    assert plain is not None and plain.verify_mode == ssl.CERT_NONE
    assert mutual is not None and mutual.verify_mode == ssl.CERT_REQUIRED
    assert mutual.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_a_missing_or_broken_file_names_its_setting(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    with pytest.raises(ValidationError, match="tls_client_ca: no such file"):
        server_context(
            settings(tmp_path, tls_cert="tls/node.pem", tls_key="node.key", tls_client_ca="x.pem")
        )
    (tmp_path / "broken.pem").write_text("not a certificate\n", encoding="utf-8")
    with pytest.raises(ValidationError, match="tls_cert/tls_key: cannot load"):
        server_context(settings(tmp_path, tls_cert="broken.pem", tls_key="node.key"))
    with pytest.raises(ValidationError, match="tls_ca: cannot load"):
        client_context(settings(tmp_path, tls_ca="broken.pem"))


def test_the_client_trusts_only_the_configured_ca(tmp_path: Path, ca: CertificateAuthority) -> None:
    context = client_context(settings(tmp_path, tls_ca="ca/ca.pem"))
    trusted = context.get_ca_certs()
    assert [dict(x[0] for x in c["subject"])["commonName"] for c in trusted] == ["test CA"]
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
