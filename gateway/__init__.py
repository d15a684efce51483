"""fluxgate: the service (HTTP API, job lifecycle, images, storage, webhooks, settings, CLI)."""

__version__ = "0.1.0"
