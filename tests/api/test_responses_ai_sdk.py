"""The Vercel AI SDK's default OpenAI provider (`openai(id)`, which calls POST /v1/responses)
with its image tool, via npm: `generateText` with `openai.tools.imageGeneration(...)`, a second
turn that hands the first back (the SDK sends the image as an `item_reference`), and
`streamText`. (`generateImage` with `openai.image(...)` calls /v1/images/generations, tested
with the images API.)"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import Gateway, jobs_of, ledger_of
from tests.node_clients import npm_install, run_node

PACKAGES = ("ai@6.0.326", "@ai-sdk/openai@3.0.141")

SCRIPT = """
import { generateText, streamText } from "ai";
import { createOpenAI } from "@ai-sdk/openai";
const [base, apiKey] = process.argv.slice(2);
const openai = createOpenAI({ baseURL: base + "/v1", apiKey });
const tools = { image_generation: openai.tools.imageGeneration({ outputFormat: "png",
                                                                 size: "1536x1024" }) };
const first = await generateText({ model: openai("gpt-5"), prompt: "a red fox in snow", tools });
const second = await generateText({ model: openai("gpt-5"), tools, messages: [
  { role: "user", content: "a red fox in snow" }, ...first.response.messages,
  { role: "user", content: "make it night" }] });
const stream = streamText({ model: openai("gpt-5"), prompt: "a fox", tools: {
  image_generation: openai.tools.imageGeneration({ partialImages: 1 }) } });
const parts = [];
for await (const part of stream.fullStream) parts.push(part.type);
const streamed = await stream.toolResults;
console.log(JSON.stringify({
  first: { text: first.text, finish: first.finishReason, id: first.response.id,
           result: first.toolResults[0].output.result, usage: first.usage.totalTokens },
  second: { sent: second.request.body.input, n: second.toolResults.length },
  stream: { parts, results: streamed.length, text: await stream.text } }));
"""


@pytest.fixture(scope="module")
def ai_sdk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return npm_install(tmp_path_factory.mktemp("ai-sdk"), *PACKAGES)


def test_generate_text_with_the_image_tool_multi_turn_and_stream(gateway: Gateway,
                                                                 ai_sdk: Path) -> None:
    key_id, key = gateway.create_key("ai-sdk", balance=1_000_000)
    result = run_node(ai_sdk, SCRIPT, gateway.base_url, key, timeout=180)
    first = result["first"]
    image = Image.open(io.BytesIO(base64.b64decode(first["result"])))
    assert image.format == "PNG" and image.size == (1248, 832)  # 3:2 from the tool's size
    assert first["finish"] == "stop" and first["text"].startswith("![image")
    assert first["id"].startswith("resp_") and first["usage"] >= 2
    # the second turn names the first image by reference and edits it
    assert any(item.get("type") == "item_reference" and item["id"].startswith("ig_")
               for item in result["second"]["sent"])
    assert result["second"]["n"] == 1
    parts = result["stream"]["parts"]
    assert "tool-result" in parts and "text-delta" in parts and parts[-1] == "finish"
    assert result["stream"]["results"] >= 1  # (the partial image is a preliminary result)
    assert result["stream"]["text"].startswith("![image")
    jobs = jobs_of(gateway, key_id)
    assert [(j.surface, j.operation, j.status) for j in jobs] == [
        ("openai.responses", "generate", "succeeded"), ("openai.responses", "edit", "succeeded"),
        ("openai.responses", "generate", "succeeded")]
    assert ledger_of(gateway, key_id)[0] == 1_000_000 - 3 * 40_000  # one charge per image
