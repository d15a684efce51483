"""Schemathesis hooks for the contract run (`SCHEMATHESIS_HOOKS=tests.api.contract_hooks`,
see tests/api/test_openapi_all_checks.py).

* Strategies for the document's custom string formats (gateway/api/schemas.py), so the run
  sends values the server can take: an `image-reference` is a real small PNG (base64 or a
  data URL), a `webhook-url` is empty or a loopback URL (the test gateway's fetch policy
  allows it).
* `filter_case` drops the few schema-valid cases whose validity the document states but
  schemathesis cannot generate around: its coverage phase sends random bytes as an
  `image/png` upload (the encoding names the image types; anything else is a documented
  415), and cannot evaluate conditionals on multipart bodies with files, so a form edit with
  both `stream` and `async` true (refused: choose one; the JSON body's schema says so with
  `not`) is left out. Only positive cases are dropped: negative ones are all sent.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import schemathesis
from hypothesis import strategies as st
from PIL import Image
from schemathesis import GenerationMode


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


PNG_BASE64 = base64.b64encode(_png()).decode()
IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"RIFF")

schemathesis.openapi.format("image-reference", st.sampled_from(
    [PNG_BASE64, f"data:image/png;base64,{PNG_BASE64}"]))
schemathesis.openapi.format("webhook-url", st.sampled_from(["", "http://127.0.0.1:9/hook"]))


def _is_image(value: object) -> bool:
    return isinstance(value, bytes) and value.startswith(IMAGE_SIGNATURES)


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    """False for a positive case the server rightly refuses for what the schema cannot say."""
    meta = case.meta
    if meta is not None and meta.generation.mode is GenerationMode.POSITIVE \
            and case.operation.path == "/v1/flux-3-image" and isinstance(case.body, dict) \
            and case.body.get("images"):
        return False  # FLUX 3 references must be >= 256x256 (the schema cannot say it)
    if meta is None or meta.generation.mode is not GenerationMode.POSITIVE \
            or case.media_type != "multipart/form-data" or not isinstance(case.body, dict):
        return True
    body: dict[str, Any] = case.body
    if case.operation.path == "/replicate/v1/files":
        return _is_image(body.get("content"))
    if case.operation.path == "/v1/images/edits":
        return not (body.get("stream") == "true" and body.get("async") == "true")
    return True
