"""One dependency for every route: client text the databases cannot store (a NUL character,
a lone surrogate; see gateway/storable.py) is refused before the route runs, so before any
lookup, job or charge, with the route family's invalid-input error.

It reads the path parameters, the query string, and the body FastAPI has already parsed for
the route (JSON or a form; cached on the request, so nothing is read twice). Routes that read
their own bodies (chat, edits, file uploads) are covered where their text is used: every
order's prompt is checked by `OrderDesk.prepare`, uploads' names and metadata by their route.
A caller whose key is refused hears that first, as for any other invalid input.

`install` writes the rule into the OpenAPI document (a NUL-free `pattern` on free text), so
that what the API refuses is what its schema says is invalid."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.routing import APIRoute
from starlette.datastructures import FormData, UploadFile

from gateway.api.key_first import key_error
from gateway.errors import InvalidRequest
from gateway.storable import refuse_unstorable


async def _parsed_body(request: Request) -> object:
    """The body FastAPI parsed for this route (None when the route declares none)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or route.body_field is None:
        return None
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form: FormData = await request.form()  # cached by the route's own parse
        return {k: (v.filename or "") if isinstance(v, UploadFile) else v
                for k, v in form.multi_items()}
    try:
        return await request.json()  # cached by the route's own parse
    except (ValueError, UnicodeDecodeError):
        return None  # not JSON: the route's validation answers for it


async def refuse_unstorable_text(request: Request) -> None:
    """Raise InvalidRequest (`invalid_text`, naming the field) when a path parameter, query
    parameter or parsed body field holds text the databases cannot store."""
    try:
        refuse_unstorable(dict(request.path_params))
        for name, value in request.query_params.multi_items():
            refuse_unstorable({name: value})
        refuse_unstorable(await _parsed_body(request))
    except InvalidRequest:
        refused = await key_error(request)
        if refused is not None:
            raise refused from None
        raise


#: a JSON Schema pattern (ECMA 262 and Python `re` alike) for text without a NUL character
NUL_FREE = "^[^\\u0000]*$"


def _document(node: object) -> None:
    if isinstance(node, list):
        for item in node:
            _document(item)
        return
    if not isinstance(node, dict):
        return
    types = node.get("type")
    is_string = types == "string" or (isinstance(types, list) and "string" in types)
    if is_string and "pattern" not in node and "enum" not in node and "const" not in node \
            and node.get("format") not in ("binary", "byte"):
        node["pattern"] = NUL_FREE
    is_object = types == "object" or (types is None and "properties" in node)
    if is_object and node.get("additionalProperties") is not False \
            and "propertyNames" not in node:  # open objects (JSON Schema's default too)
        node["propertyNames"] = {"pattern": NUL_FREE}
        if node.get("additionalProperties", True) is True:  # any value: any storable value
            node["additionalProperties"] = {"$ref": STORABLE_REF}
    for value in node.values():
        _document(value)


STORABLE_REF = "#/components/schemas/StorableJsonValue"
#: any JSON value whose strings and keys, at any depth, are NUL-free (the values of open
#: objects: the databases store them, so a NUL key deep inside is refused too)
STORABLE_JSON_VALUE: dict[str, Any] = {  # one schema, each keyword for its own type
    "description": "Any JSON value without a NUL character in its strings or keys.",
    "type": ["string", "number", "boolean", "null", "array", "object"],
    "pattern": NUL_FREE, "items": {"$ref": STORABLE_REF},
    "propertyNames": {"pattern": NUL_FREE}, "additionalProperties": {"$ref": STORABLE_REF}}


def documented(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` (an OpenAPI document) with the rule above written into it: every free-text
    string (no pattern, enum or binary format of its own) gets the `NUL_FREE` pattern, and
    every open object the same for its property names, its other values being any
    `STORABLE_JSON_VALUE`. Changes and answers `schema`."""
    _document(schema)
    schema.setdefault("components", {}).setdefault("schemas", {})[
        "StorableJsonValue"] = STORABLE_JSON_VALUE
    return schema


def install(app: FastAPI) -> None:
    """Serve `app`'s OpenAPI document `documented` (built once, as FastAPI does)."""

    build = app.openapi  # FastAPI's own (it caches in `app.openapi_schema`)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = documented(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
