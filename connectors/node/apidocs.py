"""The API docs page (``/docs``) served from the node's own assets: it works offline.

FastAPI's default page loads Swagger UI's script and style from a public CDN, so on a node without
internet access (the usual case for a tax bureau or a bank) ``/docs`` was blank, and every visit
told a third party which hosts run a node. The assets here ship inside a PyPI package
(``fastapi-offline``: Swagger UI 5, which renders the OpenAPI 3.1 documents FastAPI writes) and
are served by the node under ``/docs/assets``; the page references nothing else. ReDoc is not
offered (one page is enough, and its bundle would be a second copy of the same facts).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS_PATH", "DOCS_PATH", "install_api_docs"]

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"


def _assets() -> Path:
    return Path(str(resources.files("fastapi_offline") / "static"))


def install_api_docs(app: FastAPI) -> None:
    """Serve ``/docs`` and its assets (create the app with ``docs_url=None, redoc_url=None``)."""
    app.mount(ASSETS_PATH, StaticFiles(directory=_assets()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(DOCS_PATH, include_in_schema=False)
    def api_docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
        )
