"""The API-key side of every websocket: the handshake, and the re-check that ends a socket whose key stopped.

A socket outlives the moment its key was checked, so the key is read again
before acting on each client message (one indexed query) and, while the
socket streams, every AIHUB_WS_KEY_RECHECK_SECONDS: a key revoked, expired or
whose user was deactivated gets an `invalid_api_key` error and close code 4401
(docs/websocket.md). Revoking a key or deactivating a user also cancels its
running requests (apps/accounts/services.py); this only stops the socket.
"""
from __future__ import annotations

import asyncio

from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from apps.core.errors import AppError, AuthenticationError, as_app_error
from apps.core.json_input import JsonInputError, JsonTextError, loads_bounded

from .models import ApiKey
from .services import api_key_authenticate, api_key_still_usable, bearer_token_from_scope, require_scope

CLOSE_UNAUTHENTICATED = 4401


def error_message(error: AppError, **extra) -> dict:
    """An error as a websocket message: the API's error shape with `"type": "error"`."""
    return {"type": "error", **error.as_body(), **extra}


def after_seq_of(content: dict) -> int:
    """The `after_seq` of a message that resumes an event log (0 when absent); 400-style error otherwise."""
    after_seq = content.get("after_seq", 0)
    if isinstance(after_seq, bool) or not isinstance(after_seq, int) or after_seq < 0:
        raise AppError("after_seq must be an integer >= 0.", param="after_seq")
    return after_seq


class ApiKeyConsumer(AsyncJsonWebsocketConsumer):
    """A consumer that acts for one API key.

    Subclasses set `required_scope` and implement `on_authenticated` (say
    hello, or refuse), `on_message` (one authenticated message), `is_streaming`
    and `stop_streams` (end the socket's pumps: on disconnect and when the key
    stops).
    """

    required_scope: str

    async def connect(self):
        self.key: ApiKey | None = None
        self._key_watch: asyncio.Task | None = None
        await self.accept()
        raw = bearer_token_from_scope(self.scope)
        if raw:
            await self._authenticate(raw)

    async def disconnect(self, code):
        if self._key_watch:
            self._key_watch.cancel()
        await self.stop_streams()

    async def decode_json(self, text_data):
        # Bounded like every HTTP body (apps/core/json_input.py): deep nesting would raise RecursionError
        # here and drop the socket with a server error. Daphne caps a message at 1 MiB before this.
        try:
            return loads_bounded(text_data, max_depth=settings.AIHUB_MAX_JSON_DEPTH, strict=True)
        except JsonTextError as exc:
            return as_app_error(exc)  # answered by receive_json
        except JsonInputError:
            return None  # answered by receive_json as an invalid message

    async def receive_json(self, content, **kwargs):
        kind = content.get("type") if isinstance(content, dict) else None
        if isinstance(content, AppError):
            await self.send_json(error_message(content))
        elif not isinstance(kind, str):
            await self.send_json(error_message(AppError("Each message must be a JSON object with a 'type'.",
                                                        param="type", code="invalid_message")))
        elif kind == "auth":
            await self._authenticate(content.get("api_key") or "")
        elif self.key is None:
            await self.refuse(AuthenticationError(
                "Authenticate first: send {\"type\": \"auth\", \"api_key\": ...} or an Authorization header."))
        elif await self._key_still_usable():
            await self.on_message(kind, content)

    async def refuse(self, error: AppError, *, code: int = CLOSE_UNAUTHENTICATED) -> None:
        """Stop streaming, send the error and close."""
        await self.stop_streams()
        await self.send_json(error_message(error))
        await self.close(code)

    async def _authenticate(self, raw_key: str) -> None:
        key = await sync_to_async(api_key_authenticate)(raw_key=raw_key) if raw_key else None
        if key is None:
            await self.refuse(AuthenticationError("Incorrect API key provided, or the key was revoked."))
            return
        try:
            require_scope(key, self.required_scope)
        except AppError as error:
            await self.refuse(error)
            return
        if not await self.on_authenticated(key):
            return
        self.key = key
        if self._key_watch is None:
            self._key_watch = asyncio.create_task(self._watch_key())

    async def _key_still_usable(self) -> bool:
        """Re-read the key; when it stopped, refuse (error, close 4401) and answer False."""
        key = self.key
        if await sync_to_async(api_key_still_usable)(key_id=key.id):
            return True
        if self.key is key:  # not already refused by the other check (a message and the watch can overlap)
            self.key = None
            await self.refuse(AuthenticationError(
                "This API key was revoked or has expired, or its user was deactivated."))
        return False

    async def _watch_key(self) -> None:
        # Pumps send without the client saying anything: without this, a socket
        # that only listens would stream for a stopped key until its requests end.
        interval = settings.AIHUB_WS_KEY_RECHECK_SECONDS
        while self.key is not None:
            await asyncio.sleep(interval)
            if self.key is not None and self.is_streaming():
                await self._key_still_usable()

    async def on_authenticated(self, key: ApiKey) -> bool:
        raise NotImplementedError

    async def on_message(self, kind: str, content: dict) -> None:
        raise NotImplementedError

    def is_streaming(self) -> bool:
        return False

    async def stop_streams(self) -> None:
        pass
