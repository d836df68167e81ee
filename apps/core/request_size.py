"""Request bodies bounded before anything reads or parses them: 413 `request_too_large`.

An ASGI wrapper in front of Django, because Django's ASGI handler copies the
whole body (to memory, then a temporary file) before any middleware or view
runs, and DRF's JSON parser has no limit of its own. A declared Content-Length
over the limit is refused at once; a body without one (chunked) is counted as
it arrives and refused when it crosses the limit, and Django, told the client
left, sends nothing. Daphne (Twisted) has already buffered the raw bytes to a
temporary file by then: that costs I/O, not CPU; put a proxy's body limit
(nginx `client_max_body_size`) in front to bound the disk too (docs/limits.md).
"""
from __future__ import annotations

import json

from django.conf import settings
from django.urls import Resolver404, resolve

from .errors import error_body

# Multipart framing and the `purpose` field beside the file itself.
MULTIPART_OVERHEAD_BYTES = 2**20


def body_limit(path: str) -> int:
    """The largest body the endpoint at `path` takes, in bytes."""
    try:
        name = resolve(path).url_name
    except Resolver404:
        name = None
    if name in ("chat-completions", "completions"):  # prompts are as large as chat messages
        return settings.AIHUB_MAX_CHAT_REQUEST_BYTES
    if name == "file-list":  # dataset uploads
        return settings.AIHUB_MAX_FILE_BYTES + MULTIPART_OVERHEAD_BYTES
    if name in ("audio-transcriptions", "audio-translations"):
        return settings.AIHUB_AUDIO_MAX_BYTES + MULTIPART_OVERHEAD_BYTES
    return settings.AIHUB_MAX_REQUEST_BYTES


def _declared_length(scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(send, limit: int) -> None:
    body = json.dumps(error_body(f"The request body is larger than this endpoint accepts ({limit} bytes).",
                                 code="request_too_large")).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class RequestBodyLimit:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = body_limit(scope["path"])
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            return await _refuse(send, limit)
        received, refused = 0, False

        async def counted_receive():
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    await _refuse(send, limit)
                    return {"type": "http.disconnect"}  # Django stops reading and answers nothing
            return message

        async def guarded_send(message):
            if not refused:
                await send(message)

        await self.app(scope, counted_receive, guarded_send)
