"""`/docs`: Swagger UI from assets this server serves itself, so the page works offline.

FastAPI's default page loads swagger-ui from a CDN, so on a machine without internet it is blank.
The assets come from the `swagger-ui-bundle` package (in the `serve` extra); without it /docs is a
short page that says so and points at /openapi.json. ReDoc (which also loads from a CDN) is off.
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"


def swagger_assets_dir() -> Path | None:
    """The installed swagger-ui files, or None when swagger-ui-bundle is not installed."""
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    path = Path(swagger_ui_bundle.swagger_ui_path)
    return path if (path / "swagger-ui-bundle.js").is_file() else None


def add_docs(app: FastAPI, title: str) -> None:
    """GET /docs (not in the schema) and, when the assets are installed, the files under ASSETS_URL."""
    assets = swagger_assets_dir()
    if assets is not None:
        app.mount(ASSETS_URL, StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        if assets is None:
            return HTMLResponse(_NO_ASSETS.format(title=html.escape(title)))
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{title} - docs",
                                   swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS_URL}/favicon-32x32.png")


_NO_ASSETS = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title} - docs</title></head>
<body>
<h1>{title}: API documentation</h1>
<p>The interactive documentation needs the Swagger UI files, which are not installed on this server:
<code>pip install swagger-ui-bundle</code> (or <code>pip install 'onebert[serve]'</code>) and restart it.</p>
<p>The API description itself is here: <a href="/openapi.json">/openapi.json</a> (OpenAPI 3).</p>
</body></html>
"""
