"""Text the databases can store: PostgreSQL's `text` holds no NUL character (U+0000) and,
being UTF-8, no lone surrogate (U+D800..U+DFFF, which JSON's `\\ud800` escapes can carry);
SQLite would store both. Client text is refused with `InvalidRequest` (code `invalid_text`)
before it reaches either, so both databases answer alike."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

from gateway.errors import InvalidRequest

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _problem(text: str) -> str | None:
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    return "a NUL character (\\u0000)" if found.group() == "\x00" else \
        f"a lone surrogate (\\u{ord(found.group()):04x})"


def _walk(value: object, path: str) -> Iterator[tuple[str, str]]:
    """(path, problem) of every unstorable string in a JSON-like value, keys included."""
    if isinstance(value, str):
        if (problem := _problem(value)) is not None:
            yield path, problem
    elif isinstance(value, Mapping):
        for key, item in value.items():
            inner = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and (problem := _problem(key)) is not None:
                yield path, f"{problem} in a field name"
            else:
                yield from _walk(item, inner)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}.{i}" if path else str(i))


def refuse_unstorable(value: object, param: str = "") -> None:
    """Raise InvalidRequest naming the first string in `value` (a string, or JSON-like lists
    and mappings, walked with their keys) that holds a NUL character or a lone surrogate;
    `param` names `value` itself (nested fields are named `param.key.0...`)."""
    for path, problem in _walk(value, param):
        name = path or None
        raise InvalidRequest(
            f"{name + ': ' if name else ''}the text contains {problem}, which cannot be "
            "stored; remove it.", param=name, code="invalid_text")
