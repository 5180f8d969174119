"""/api/docs: Swagger UI for the JSON API, served from this app (the `swagger-ui-bundle-v2` package's files) under
the app's own Content-Security-Policy — no CDN, nothing loaded from elsewhere, and it works offline.

"Try it out" works from a logged-in browser: static/api-docs.js sends the session's CSRF token with every request.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse

from rlhflab.label.deps import ctx_of

router = APIRouter(include_in_schema=False)
ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon-32x32.png": "image/png"}


def swagger_dir() -> Path:
    import swagger_ui_bundle

    return Path(swagger_ui_bundle.swagger_ui_path)


@router.get("/api/docs")
def docs_page(request: Request) -> HTMLResponse:
    return ctx_of(request).templates.TemplateResponse(request, "api_docs.html", {})


@router.get("/api/docs/assets/{name}")
def docs_asset(name: str) -> FileResponse:
    if name not in ASSETS:  # only the three files the page needs, never a path into the package
        from rlhflab.label.service import Problem

        raise Problem(404, "no such asset")
    return FileResponse(swagger_dir() / name, media_type=ASSETS[name],
                        headers={"Cache-Control": "public, max-age=86400"})
