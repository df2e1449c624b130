"""``/docs`` works offline: every asset the page references is served by the node itself."""

from __future__ import annotations

import re

from tests.connectors._space import Node


def test_docs_page_references_only_assets_the_node_serves(tax: Node) -> None:
    page = tax.client.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text

    referenced = set(re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", page.text))
    referenced |= set(re.findall(r"""url\s*:\s*["']([^"']+)["']""", page.text))  # the spec

    assert referenced, page.text
    assert [u for u in referenced if "://" in u or u.startswith("//")] == []  # nothing remote
    for url in sorted(referenced):
        served = tax.client.get(url)
        assert served.status_code == 200, url
        assert served.content, url
    assert "/openapi.json" in referenced
    assert (
        tax.client.get("/docs/assets/swagger-ui-bundle.js")
        .headers["content-type"]
        .startswith(("application/javascript", "text/javascript"))
    )
    assert tax.client.get("/redoc").status_code == 404  # no second page that loads a CDN
