"""GET /: what this server is and where to go next (API docs, health, models).

An HTML page for a browser, the same links as JSON for anything that asks for JSON. The API
docs (`/docs`, `/redoc`) load their scripts and styles from this server (`DOCS_ASSETS`, files
shipped by the `fastapi-offline` package), so they work offline and behind strict firewalls.
"""

from __future__ import annotations

from html import escape

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from gateway import __version__

router = APIRouter()

#: where the docs pages' JavaScript, CSS and favicon are served (see `create_app`)
DOCS_ASSETS = "/docs-assets"

#: (path, what it is), in the order shown
LINKS = (
    ("/docs", "API reference (Swagger UI: try requests in the browser)"),
    ("/redoc", "API reference (ReDoc)"),
    ("/openapi.json", "OpenAPI schema"),
    ("/healthz", "liveness: channels, breakers, jobs running"),
    ("/readyz", "readiness: the database answers"),
    ("/v1/models", "models your key may use (needs a key)"),
    ("/console", "web console: keys, usage, jobs, channels, playground (admin token or key)"),
)


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "json" in accept and "text/html" not in accept


@router.get("/", include_in_schema=False)
async def home(request: Request) -> Response:
    """Links to the docs and health endpoints: HTML, or JSON when the client asks for it."""
    root = request.scope.get("root_path", "")
    if _wants_json(request):
        return JSONResponse({"name": "fluxgate", "version": __version__,
                             "links": {path: f"{root}{path}" for path, _ in LINKS}})
    items = "\n".join(f'<li><a href="{escape(root + path)}">{escape(path)}</a>: '
                      f"{escape(what)}</li>" for path, what in LINKS)
    return HTMLResponse(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fluxgate {__version__}</title>
<link rel="icon" href="{escape(root + DOCS_ASSETS)}/favicon.png"></head>
<body style="font-family: sans-serif; max-width: 44rem; margin: 2rem auto">
<h1>fluxgate {__version__}</h1>
<p>An OpenAI-compatible gateway for FLUX.1 Kontext image generation and editing. Point an
OpenAI client at <code>{escape(str(request.base_url).rstrip('/'))}/v1</code> with a fluxgate key
(<code>fluxgate keys create --name me</code>).</p>
<ul>
{items}
</ul>
</body></html>
""")
