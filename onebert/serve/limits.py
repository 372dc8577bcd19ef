"""Request checks: body size, item counts, characters, tokens, model sequences; and errors safe to send.

Each limit has its own status: a body over `max_body_bytes`, more than `max_texts` items, a text over
`max_text_chars` characters or a request needing more than `max_windows` model sequences -> 413;
a text longer than the endpoint's maximum length (where texts are not split into windows) -> 422
naming the item and the length; a lone UTF-16 surrogate -> 422 naming the field.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

# ----------------------------------------------------------------------------- body size limit


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes (server option --max-body-bytes)")


class BodySizeLimit:
    """Refuse bodies over `max_bytes`: at once by Content-Length, else while they stream in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            error = BodyTooLarge(self.max_bytes)
            await JSONResponse({"detail": error.detail}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)  # FastAPI re-raises HTTPExceptions from body reading
            return message

        await self.app(scope, limited_receive, send)


# ----------------------------------------------------------------------------- errors that are safe to send

ECHO_CHARS = 200  # of the input a validation error shows: enough to recognise it, never the whole 4 MB body
SURROGATE = re.compile("[\ud800-\udfff]")


def json_safe(value: Any, limit: int = ECHO_CHARS) -> Any:
    """`value` as JSON can carry it: lone surrogates escaped, NaN/inf as text, long strings and lists cut.

    A validation error echoes what it rejected, and what it rejected may be exactly what JSON
    cannot encode (NaN is not JSON; a lone surrogate is not UTF-8): the error body must not fail too.
    """
    if isinstance(value, str):
        text = value.encode("utf-8", "backslashreplace").decode("utf-8") if SURROGATE.search(value) else value
        return text if len(text) <= limit else f"{text[:limit]}... ({len(value)} characters)"
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)  # 'nan', 'inf'
    if isinstance(value, dict):
        items = list(value.items())
        shown = {str(json_safe(k, limit)): json_safe(v, limit) for k, v in items[:8]}
        if len(items) > 8:
            shown["..."] = f"{len(items) - 8} more keys"
        return shown
    if isinstance(value, (list, tuple)):
        shown = [json_safe(v, limit) for v in value[:8]]
        return shown + [f"... {len(value) - 8} more items"] if len(value) > 8 else shown
    return json_safe(str(value), limit)


def validation_error_body(exc: RequestValidationError) -> dict[str, Any]:
    errors = []
    for error in exc.errors():
        shown = {key: error[key] for key in ("type", "loc", "msg") if key in error}
        if "input" in error:
            shown["input"] = error["input"]
        if "ctx" in error:
            shown["ctx"] = error["ctx"]
        errors.append(json_safe(shown))
    return {"detail": errors}


def lone_surrogate_error(loc: tuple[str | int, ...], text: str) -> HTTPException:
    """422 for a text with a lone surrogate: valid JSON ("\\ud800"), but no character, so no tokenizer input."""
    match = SURROGATE.search(text)
    assert match is not None
    return HTTPException(422, [{"loc": list(loc), "type": "lone_surrogate",
                                "msg": f"character {match.start()} is a lone UTF-16 surrogate "
                                       f"({match.group().encode('utf-8', 'backslashreplace').decode()}), not a "
                                       f"Unicode character; send the character itself or a valid surrogate pair"}])


# ----------------------------------------------------------------------------- per-request limits

Loc = tuple[str | int, ...]


class RequestLimits:
    """The checks a route runs before queueing a request: counts, characters, tokens, model sequences.

    tokenizer: the server's own (the workers' tokenizers change truncation settings while they run).
    count_windows: `count(items) -> model sequences` for /predict (the task's `count_windows`).
    """

    def __init__(self, settings, tokenizer, count_windows: Callable[[list[Any]], int], window_length: int) -> None:
        self.settings = settings
        self.tokenizer = tokenizer
        self.count_windows = count_windows
        self.window_length = window_length

    def count(self, count: int) -> None:
        if count > self.settings.max_texts:
            raise HTTPException(413, f"{count} items in one request; the limit is {self.settings.max_texts} "
                                     f"(server option --max-texts)")

    def chars(self, texts: list[tuple[Loc, str]]) -> None:
        limit = self.settings.max_text_chars
        for loc, text in texts:
            if len(text) > limit:
                raise HTTPException(413, f"{'.'.join(map(str, loc))} has {len(text)} characters; the limit is "
                                         f"{limit} (server option --max-text-chars)")
        for loc, text in texts:
            if SURROGATE.search(text):
                raise lone_surrogate_error(loc if loc[0] == "body" else ("body", *loc), text)

    def windows(self, items: list[Any]) -> int:
        """The request's model sequences (its cost in the queue); 413 over --max-windows."""
        count = self.count_windows(items)
        if count > self.settings.max_windows:
            raise HTTPException(413, f"this request needs about {count} model sequences of {self.window_length} "
                                     f"tokens (long texts are split into windows); the limit per request is "
                                     f"{self.settings.max_windows} (server option --max-windows): send fewer or "
                                     f"shorter texts")
        return count

    def tokens(self, rows: list[tuple[str, ...]], field: str, max_length: int, endpoint: str) -> None:
        """422 naming the first item whose [CLS] a [SEP] (b [SEP]) exceeds the endpoint's `max_length`."""
        flat = [text for row in rows for text in row]
        lengths = [len(ids) for ids in self.tokenizer.encode_ids(flat)]
        position = 0
        for index, row in enumerate(rows):
            tokens = sum(lengths[position:position + len(row)]) + len(row) + 1
            position += len(row)
            if tokens > max_length:
                raise HTTPException(422, [{"loc": ["body", field, index], "type": "too_many_tokens",
                                           "msg": f"{tokens} tokens; the model reads at most {max_length} on "
                                                  f"{endpoint} (max_lengths in /health; texts are never cut "
                                                  f"silently: shorten or split it)"}])
