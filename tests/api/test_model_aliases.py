"""Model aliases: OpenAI names that clients hard-code (`gpt-image-1`, `dall-e-3`) reach a
Kontext model, configurable per model, and are listed in /v1/models."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from gateway.settings import ConfigError, load_settings
from tests.conftest import Gateway, jobs_of


def client(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0,
                         _strict_response_validation=True)


@pytest.mark.parametrize(("alias", "model"), [("gpt-image-1", "flux-kontext-pro"),
                                              ("dall-e-3", "flux-kontext-pro"),
                                              ("gpt-image-1.5", "flux-kontext-max")])
def test_default_aliases_generate_with_their_kontext_model(gateway: Gateway, alias: str,
                                                           model: str) -> None:
    key_id, key = gateway.create_key("comfy")
    result = client(gateway, key).images.generate(model=alias, prompt="a fox",
                                                  response_format="url")
    assert result.data[0].url
    assert [j.model for j in jobs_of(gateway, key_id)] == [model]


def test_default_aliases_are_listed_with_the_models(gateway: Gateway, api_key: str) -> None:
    ids = [m.id for m in client(gateway, api_key).models.list()]
    assert {"gpt-image-1", "dall-e-3", "dall-e-2"} <= set(ids)
    card = client(gateway, api_key).models.retrieve("gpt-image-1")
    assert card.id == "gpt-image-1"


def test_aliases_are_configurable(gateway_factory: Any) -> None:
    gw = gateway_factory(model_aliases={"my-image": "flux-kontext-max"})
    key_id, key = gw.create_key("k")
    sdk = client(gw, key)
    ids = [m.id for m in sdk.models.list()]
    assert "my-image" in ids and "gpt-image-1" not in ids  # the mapping is replaced
    sdk.images.generate(model="my-image", prompt="a fox", response_format="url")
    assert [j.model for j in jobs_of(gw, key_id)] == ["flux-kontext-max"]
    with pytest.raises(openai.NotFoundError) as info:
        sdk.images.generate(model="gpt-image-1", prompt="a fox")
    assert info.value.code == "model_not_found"


def test_aliases_follow_the_key_allow_list(gateway: Gateway) -> None:
    _, key = gateway.create_key("max-only", models=["flux-kontext-max"])
    with pytest.raises(openai.PermissionDeniedError):
        client(gateway, key).images.generate(model="dall-e-3", prompt="a fox")
    assert "dall-e-3" not in [m.id for m in client(gateway, key).models.list()]


def test_chat_accepts_an_alias(gateway: Gateway) -> None:
    key_id, key = gateway.create_key("chat")
    answer = client(gateway, key).chat.completions.create(
        model="gpt-image-1", messages=[{"role": "user", "content": "a fox"}])
    assert "/files/file_" in (answer.choices[0].message.content or "")
    assert [j.model for j in jobs_of(gateway, key_id)] == ["flux-kontext-pro"]


def test_an_alias_of_an_unknown_model_stops_start_up_with_one_line() -> None:
    with pytest.raises(ConfigError, match=r"model_aliases: .*'gpt-image-1' names 'gpt-4'"):
        load_settings(None, model_aliases={"gpt-image-1": "gpt-4"})
