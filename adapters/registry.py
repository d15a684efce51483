"""Channel type name -> adapter factory. The only place that knows every adapter file.

A factory takes the channel's free-form options (already read from config), the channel's
secret (or None), its base URL (or None for the upstream's default), the channel's
`httpx.AsyncClient` for its API and the client for URLs the upstream names (result
downloads: the gateway passes one whose transport applies its address policy), and returns an
`Adapter`. Options are validated by each adapter's options
model (unknown keys are refused: pydantic ValidationError).

`NEEDS_SECRET` lists the types that cannot work without a key, and `ENV_CREDENTIALS` the
well-known environment variables that create a channel on their own when no channel is
configured (zero-config), with the routing priority of that channel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import httpx

from adapters import bfl, comfyui, fal, replicate
from adapters.base import Adapter
from adapters.bfl import BflAdapter, BflOptions
from adapters.comfyui import ComfyUIAdapter, ComfyUIOptions
from adapters.fal import FalAdapter, FalOptions
from adapters.local_worker import LocalWorkerAdapter, LocalWorkerOptions
from adapters.openai_compatible import OpenAICompatibleAdapter, OpenAICompatibleOptions
from adapters.replicate import ReplicateAdapter, ReplicateOptions
from adapters.sandbox import SandboxAdapter, SandboxOptions

AdapterFactory = Callable[
    [Mapping[str, Any], str | None, str | None, httpx.AsyncClient, httpx.AsyncClient], Adapter]


def _sandbox(options: Mapping[str, Any], _secret: str | None, _base_url: str | None,
             _client: httpx.AsyncClient, _results: httpx.AsyncClient) -> Adapter:
    return SandboxAdapter(SandboxOptions.model_validate(dict(options)))


def _bfl(options: Mapping[str, Any], secret: str | None, base_url: str | None,
         client: httpx.AsyncClient, results: httpx.AsyncClient) -> Adapter:
    return BflAdapter(BflOptions.model_validate(dict(options)), secret, base_url, client,
                      results)


def _replicate(options: Mapping[str, Any], secret: str | None, base_url: str | None,
               client: httpx.AsyncClient, results: httpx.AsyncClient) -> Adapter:
    return ReplicateAdapter(ReplicateOptions.model_validate(dict(options)), secret, base_url,
                            client, results)


def _fal(options: Mapping[str, Any], secret: str | None, base_url: str | None,
         client: httpx.AsyncClient, results: httpx.AsyncClient) -> Adapter:
    return FalAdapter(FalOptions.model_validate(dict(options)), secret, base_url, client,
                      results)


def _comfyui(options: Mapping[str, Any], secret: str | None, base_url: str | None,
             client: httpx.AsyncClient, results: httpx.AsyncClient) -> Adapter:
    return ComfyUIAdapter(ComfyUIOptions.model_validate(dict(options)), secret, base_url,
                          client, results)


def _openai(options: Mapping[str, Any], secret: str | None, base_url: str | None,
            client: httpx.AsyncClient, results: httpx.AsyncClient) -> Adapter:
    return OpenAICompatibleAdapter(OpenAICompatibleOptions.model_validate(dict(options)),
                                   secret, base_url, client, results)


def _local_worker(options: Mapping[str, Any], secret: str | None, base_url: str | None,
                  client: httpx.AsyncClient, _results: httpx.AsyncClient) -> Adapter:
    return LocalWorkerAdapter(LocalWorkerOptions.model_validate(dict(options)), secret,
                              base_url, client)


FACTORIES: dict[str, AdapterFactory] = {
    "sandbox": _sandbox,
    "bfl": _bfl,
    "replicate": _replicate,
    "fal": _fal,
    "openai": _openai,
    "comfyui": _comfyui,
    "local_worker": _local_worker,
}

#: Types that cannot serve anything without a secret.
NEEDS_SECRET: frozenset[str] = frozenset({"bfl", "replicate", "fal"})

#: Well-known env variable -> (channel type, priority) for zero-config channels. BFL (the model
#: maker, direct) is tried first, then fal, then Replicate.
ENV_CREDENTIALS: dict[str, tuple[str, int]] = {
    "BFL_API_KEY": ("bfl", 30),
    "FAL_KEY": ("fal", 20),
    "REPLICATE_API_TOKEN": ("replicate", 10),
}

#: Default concurrency caps by type (None = unlimited), and per-model caps inside them.
#: BFL: 24 active tasks per account, 6 for flux-kontext-max (help.bfl.ai concurrency article).
DEFAULT_MAX_CONCURRENCY: dict[str, int] = {"bfl": 24}
DEFAULT_MODEL_CONCURRENCY: dict[str, dict[str, int]] = {"bfl": {"flux-kontext-max": 6}}


#: Hosts each type's upstream documents for results and polling, reachable through the
#: channel's result client by name (no DNS pinning) besides the channel's own host and its
#: `result_hosts`. BFL: results on `delivery.*.bfl.ai` (the region part changes, "allowlist the
#: wildcard": docs.bfl.ai/integration_guidelines, help.bfl.ai/articles/9532536301), polling on
#: other `*.bfl.ai` hosts (api.eu2.bfl.ai, gateway.bfl.ai). See shared/reference/upstreams.md.
RESULT_HOSTS: dict[str, tuple[str, ...]] = {"bfl": ("*.bfl.ai",)}

#: Each type's default API origin (used when a channel sets no `base_url`).
DEFAULT_BASE_URLS: dict[str, str] = {"bfl": bfl.DEFAULT_BASE_URL,
                                     "replicate": replicate.DEFAULT_BASE_URL,
                                     "fal": fal.DEFAULT_BASE_URL,
                                     "comfyui": comfyui.DEFAULT_BASE_URL}


def build_adapter(kind: str, options: Mapping[str, Any], secret: str | None,
                  base_url: str | None, client: httpx.AsyncClient,
                  results: httpx.AsyncClient | None = None) -> Adapter:
    """Build the adapter for channel type `kind`; raises KeyError for an unknown type.

    `results` carries result downloads (default: `client`, for tests of one adapter)."""
    return FACTORIES[kind](options, secret, base_url, client, results or client)
