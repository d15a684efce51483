"""Channel type name -> adapter factory. The only place that knows every adapter file.

A factory takes the channel's free-form options (already read from config), the channel's
secret (or None), its base URL (or None for the upstream's default) and the shared
`httpx.AsyncClient`, and returns an `Adapter`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import httpx

from adapters.base import Adapter
from adapters.sandbox import SandboxAdapter, SandboxOptions

AdapterFactory = Callable[[Mapping[str, Any], str | None, str | None, httpx.AsyncClient], Adapter]


def _sandbox(options: Mapping[str, Any], _secret: str | None, _base_url: str | None,
             _client: httpx.AsyncClient) -> Adapter:
    return SandboxAdapter(SandboxOptions.model_validate(dict(options)))


FACTORIES: dict[str, AdapterFactory] = {
    "sandbox": _sandbox,
}


def build_adapter(kind: str, options: Mapping[str, Any], secret: str | None,
                  base_url: str | None, client: httpx.AsyncClient) -> Adapter:
    """Build the adapter for channel type `kind`; raises KeyError for an unknown type."""
    return FACTORIES[kind](options, secret, base_url, client)
