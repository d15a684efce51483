"""The web console at /console: keys, usage charts, a job gallery, channels and a playground,
server-rendered (Jinja2) with htmx vendored in `static/` (no CDN, no build step).

`install(app)` mounts it; see `routes.py`."""

from gateway.console.routes import install

__all__ = ["install"]
