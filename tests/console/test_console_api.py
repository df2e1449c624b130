"""The console's session: cookie instead of the admin token, CSRF on writes, sign-out, headers.

In-process (one operator node's app through a TestClient): the browser tests in
``test_console_browser.py`` drive the same routes through a real Chromium against real nodes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from connectors.common.settings import init_node
from connectors.node.app import create_app
from connectors.node.console.router import CONTENT_SECURITY_POLICY, STATIC_DIR
from connectors.node.console.sessions import CSRF_HEADER, SessionStore, session_cookie

COOKIE = session_cookie("city-centre")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    settings = init_node(tmp_path / "op", name="city-centre", roles=["operator"])
    token = settings.layout.admin_token.read_text(encoding="utf-8").strip()
    with TestClient(create_app(settings)) as client:
        yield client, token


def _sign_in(client: TestClient, token: str) -> str:
    response = client.post("/console/session", json={"token": token})
    assert response.status_code == 200
    return str(response.json()["csrf"])


def test_the_page_and_its_assets_are_served_with_a_strict_csp(
    node: tuple[TestClient, str],
) -> None:
    client, _ = node
    page = client.get("/console/")
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    assert "<script" in page.text
    assert re.search(r"\son[a-z]+\s*=", page.text) is None  # no inline event handler
    for name in sorted(p.name for p in STATIC_DIR.iterdir() if p.suffix in {".js", ".css"}):
        asset = client.get(f"/console/assets/{name}")
        assert asset.status_code == 200, name
        assert asset.headers["x-content-type-options"] == "nosniff"
    assert client.get("/console/assets/..%2Frouter.py").status_code == 404
    assert client.get("/console/assets/nothing.js").status_code == 404


def test_nothing_is_usable_without_signing_in(node: tuple[TestClient, str]) -> None:
    client, _ = node
    assert client.get("/console/session").status_code == 401
    assert client.get("/management/datasets").status_code == 401
    assert client.get("/operator/members").status_code == 401
    wrong = client.post("/console/session", json={"token": "not-the-token"})
    assert wrong.status_code == 401
    assert COOKIE not in wrong.cookies


def test_a_session_reads_and_writes_with_the_csrf_header_only(
    node: tuple[TestClient, str],
) -> None:
    client, token = node
    csrf = _sign_in(client, token)
    cookie = client.cookies.get(COOKIE)
    assert cookie and cookie != token
    me = client.get("/console/session").json()
    assert me["node"] == "city-centre" and me["roles"] == ["operator"]
    assert token not in str(me)
    assert client.get("/management/datasets").status_code == 200
    assert client.get("/operator/members").json() == []
    policy = {"id": "p1", "policy": {"permission": [{"action": "use"}]}}
    assert client.post("/management/policies", json=policy).status_code == 401
    forged = client.post("/management/policies", json=policy, headers={CSRF_HEADER: "x" * 43})
    assert forged.status_code == 401
    made = client.post("/management/policies", json=policy, headers={CSRF_HEADER: csrf})
    assert made.status_code in (201, 400)  # authorised: the body is judged, not the caller


def test_a_bad_bearer_token_is_never_downgraded_to_the_cookie(
    node: tuple[TestClient, str],
) -> None:
    client, token = node
    _sign_in(client, token)
    bad = client.get("/management/datasets", headers={"Authorization": "Bearer wrong"})
    assert bad.status_code == 401
    good = client.get("/management/datasets", headers={"Authorization": f"Bearer {token}"})
    assert good.status_code == 200


def test_sign_out_revokes_the_session(node: tuple[TestClient, str]) -> None:
    client, token = node
    csrf = _sign_in(client, token)
    cookie = client.cookies.get(COOKIE)
    assert client.delete("/console/session").status_code == 401  # CSRF needed here too
    assert client.delete("/console/session", headers={CSRF_HEADER: csrf}).status_code == 204
    client.cookies.set(COOKIE, str(cookie))  # replaying the old cookie does not help
    assert client.get("/management/datasets").status_code == 401
    assert client.get("/console/session").status_code == 401


def test_sessions_expire_when_idle_and_are_kept_as_digests() -> None:
    now = [0.0]
    store = SessionStore(clock=lambda: now[0])
    session_id, session = store.create()
    assert store.allows(session_id, "GET", None)
    assert session_id not in repr(store.__dict__)
    now[0] += 3599
    assert store.allows(session_id, "POST", session.csrf)
    now[0] += 3601
    assert not store.allows(session_id, "GET", None)
    assert len(store) == 0


def test_the_scripts_build_no_markup_from_strings_and_need_no_lax_csp() -> None:
    # what the strict CSP would block, or what could turn a node's answer into markup or code
    forbidden = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|"
        r"setAttribute\(\s*[\"']style|\.style\.|\son[a-z]+\s*="
    )
    for path in [*sorted(STATIC_DIR.glob("*.js")), STATIC_DIR / "index.html"]:
        text = path.read_text(encoding="utf-8")
        assert forbidden.search(text) is None, f"{path.name}: {forbidden.search(text)}"
        if path.suffix == ".html":
            assert "<style" not in text and "style=" not in text
            assert re.search(r"<script(?![^>]*\bsrc=)", text) is None  # no inline script
