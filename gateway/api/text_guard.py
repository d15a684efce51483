"""One dependency for every route: client text the databases cannot store (a NUL character,
a lone surrogate; see gateway/storable.py) is refused before the route runs, so before any
lookup, job or charge, with the route family's invalid-input error.

It reads the path parameters, the query string, and the body FastAPI has already parsed for
the route (JSON or a form; cached on the request, so nothing is read twice). Routes that read
their own bodies (chat, edits, file uploads) are covered where their text is used: every
order's prompt is checked by `OrderDesk.prepare`, uploads' names and metadata by their route.
A caller whose key is refused hears that first, as for any other invalid input."""

from __future__ import annotations

from fastapi import Request
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
