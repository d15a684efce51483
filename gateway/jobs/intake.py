"""Intake: turn what clients send (OpenAI, chat, BFL- and Replicate-style fields) into JobSpecs.

Pure parsing of sizes, ratios, seeds, formats and booleans lives here so every public surface
applies the same rules; loading and storing input images is `InputStore.add`.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Sequence
from typing import Any

from adapters.buckets import MAX_RATIO, MIN_RATIO, bucket_for_ratio, ratio_text
from gateway.errors import InvalidRequest
from gateway.images.addresses import url_in_text
from gateway.jobs.model import OutputFormat

_RATIO_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[:xX\u00d7*v]\s*(\d+(?:\.\d+)?)\s*$")
#: a URL in a prompt: http(s) (IPv6 literals included) or a refused scheme's form, which the
#: fetcher then refuses (see `addresses.url_in_text`)
_URL_RE = re.compile(url_in_text(r"[^\s<>\"')\]]"), re.IGNORECASE)
_FORMATS: dict[str, OutputFormat] = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
MAX_SEED = 2**32 - 1


def parse_ratio(value: str, *, param: str) -> tuple[float, str]:
    """`"16:9"`, `"16x9"`, `"1024x768"` -> (width/height, reduced "W:H"); raises InvalidRequest
    for text that is no ratio or a ratio outside Kontext's 21:9 .. 9:21."""
    m = _RATIO_RE.match(value)
    if not m or float(m.group(1)) <= 0 or float(m.group(2)) <= 0:
        raise InvalidRequest(
            f"Invalid {param} {value!r}: use a ratio such as '16:9' or '16x9', a size such as "
            "'1024x1024', or 'auto'.", param=param, code="invalid_size")
    w, h = float(m.group(1)), float(m.group(2))
    ratio = w / h
    if not (MIN_RATIO - 1e-9 <= ratio <= MAX_RATIO + 1e-9):
        raise InvalidRequest(
            f"Invalid {param} {value!r}: the aspect ratio must be between 21:9 and 9:21.",
            param=param, code="invalid_aspect_ratio")
    if w.is_integer() and h.is_integer():
        text = ratio_text(int(w), int(h))
    else:
        text = ratio_text(round(w * 1000), round(h * 1000))
    return ratio, text


def choose_aspect_ratio(*, aspect_ratio: str | None, size: str | None) -> str | None:
    """The requested "W:H", or None for the default (input's ratio, else 1:1).

    An explicit `aspect_ratio` wins over `size`; `auto`, `match_input_image` and empty values
    mean the default."""
    for value, param in ((aspect_ratio, "aspect_ratio"), (size, "size")):
        if value is None:
            continue
        text = str(value).strip()
        if text.lower() in ("", "auto", "match_input_image", "default", "none"):
            if param == "aspect_ratio":
                return None
            continue
        return parse_ratio(text, param=param)[1]
    return None


def expected_size(aspect_ratio: str | None, first_input: tuple[int, int] | None) -> tuple[int, int]:
    """The Kontext bucket (width, height) a job should come back with."""
    if aspect_ratio:
        w, h = aspect_ratio.split(":")
        return bucket_for_ratio(float(w) / float(h))
    if first_input:
        return bucket_for_ratio(first_input[0] / first_input[1])
    return (1024, 1024)


def parse_output_format(value: Any, *, default: OutputFormat = "png") -> OutputFormat:
    """png | jpeg | webp; `jpg` is accepted as input."""
    if value is None or value == "":
        return default
    fmt = _FORMATS.get(str(value).strip().lower())
    if fmt is None:
        raise InvalidRequest(f"Invalid output_format {value!r}: use png, jpeg or webp.",
                             param="output_format", code="invalid_output_format")
    return fmt


def _percent(value: Any, *, param: str) -> int:
    try:
        number = parse_int(value, param=param)
    except InvalidRequest:
        number = -1
    if not 0 <= number <= 100:
        raise InvalidRequest(f"Invalid {param} {value!r}: use an integer from 0 to 100.",
                             param=param, code=f"invalid_{param}")
    return number


def parse_quality(*, output_compression: Any = None, quality: Any = None,
                  output_quality: Any = None) -> int | None:
    """The JPEG/WebP quality asked for (0..100), or None for the default.

    `output_compression` (OpenAI) wins, then `output_quality` (Replicate), then `quality` when
    it is a number: OpenAI's words (`low`, `medium`, `high`, `auto`, `hd`, `standard`) mean no
    number and are ignored. Raises InvalidRequest naming the field for a number outside
    0..100 or a value that is no integer."""
    for value, param in ((output_compression, "output_compression"),
                         (output_quality, "output_quality")):
        if value is not None and value != "":
            return _percent(value, param=param)
    if quality is None or isinstance(quality, bool):
        return None
    text = str(quality).strip()
    if not text or not (text[0].isdigit() or text[0] in "+-."):
        return None  # a word: OpenAI's quality levels, not a number
    return _percent(quality, param="quality")


def parse_seed(value: Any) -> int:
    """An explicit seed, or a random one for None / -1 / ''."""
    if value is None or value == "":
        return secrets.randbelow(MAX_SEED)
    seed = parse_int(value, param="seed")
    if seed == -1:
        return secrets.randbelow(MAX_SEED)
    if not 0 <= seed <= MAX_SEED:
        raise InvalidRequest(f"Invalid seed {value!r}: use 0..{MAX_SEED}, or -1 for random.",
                             param="seed", code="invalid_seed")
    return seed


def parse_int(value: Any, *, param: str) -> int:
    """An int from JSON or a multipart string ("7", "7.0")."""
    if isinstance(value, bool):
        raise InvalidRequest(f"Invalid {param} {value!r}: expected an integer.", param=param)
    if isinstance(value, int):
        return value
    try:
        f = float(str(value).strip())
    except ValueError:
        f = math.nan
    if not f.is_integer():
        raise InvalidRequest(f"Invalid {param} {value!r}: expected an integer.", param=param)
    return int(f)


def parse_float(value: Any, *, param: str) -> float:
    try:
        f = float(str(value).strip()) if not isinstance(value, bool) else math.nan
    except ValueError:
        f = math.nan
    if math.isnan(f) or math.isinf(f):
        raise InvalidRequest(f"Invalid {param} {value!r}: expected a number.", param=param)
    return f


def parse_bool(value: Any, *, param: str) -> bool:
    """true/false/True/False/1/0 (multipart sends strings)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise InvalidRequest(f"Invalid {param} {value!r}: expected true or false.", param=param)


def parse_switch(value: Any, *, param: str) -> bool:
    """A protocol boolean such as `stream`: a JSON boolean, or the text `true`/`false` a
    multipart form carries (any case). `"yes"`, `1`, `"on"` are refused (InvalidRequest):
    a client that sends them means something this API does not promise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise InvalidRequest(f"Invalid {param} {value!r}: expected true or false.", param=param)


def parse_n(value: Any, *, maximum: int = 4) -> int:
    n = 1 if value is None else parse_int(value, param="n")
    if not 1 <= n <= maximum:
        raise InvalidRequest(f"Invalid n {value!r}: Kontext makes 1 to {maximum} images per "
                             "request.", param="n", code="invalid_n")
    return n


def parse_safety(value: Any) -> int | None:
    if value is None or value == "":
        return None
    level = parse_int(value, param="safety_tolerance")
    if not 0 <= level <= 6:
        raise InvalidRequest(f"Invalid safety_tolerance {value!r}: use 0 (strict) to 6.",
                             param="safety_tolerance", code="invalid_safety_tolerance")
    return level


def split_leading_urls(prompt: str) -> tuple[list[str], str]:
    """Image URLs at the start of a prompt (space separated, as resellers document) and the
    prompt without them. IPv6 literal hosts count, and so do `file:`/`gopher:`/... forms,
    so that the fetcher refuses them rather than an upstream reading them as words."""
    urls: list[str] = []
    rest = prompt.lstrip()
    while True:
        m = _URL_RE.match(rest)
        if not m or (m.end() < len(rest) and not rest[m.end()].isspace()):
            break
        urls.append(m.group(0))
        rest = rest[m.end():].lstrip()
    return urls, rest


def split_all_urls(text: str) -> tuple[list[str], str]:
    """Every URL (as `split_leading_urls` sees them) anywhere in `text`, and the text without
    them (spaces collapsed)."""
    urls = _URL_RE.findall(text)
    rest = _URL_RE.sub(" ", text)
    return urls, re.sub(r"[ \t]+", " ", rest).strip()


def collect_image_refs(body: dict[str, Any], keys: Sequence[str] = (
        "input_image", "input_image_2", "input_image_3", "input_image_4")) -> list[tuple[str, str]]:
    """(param, reference) for each non-empty input image field, in order."""
    refs = []
    for key in keys:
        value = body.get(key)
        if value:
            if not isinstance(value, str):
                raise InvalidRequest(f"Invalid {key}: expected a URL, a data URL or base64 text.",
                                     param=key)
            refs.append((key, value))
    return refs
