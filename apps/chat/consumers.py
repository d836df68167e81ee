"""/ws/v1/chat/: chat completions over a websocket, with cancel and resume.

The protocol is in docs/websocket.md. The consumer is thin: it authenticates,
submits through the same function as the REST view, and pumps the request's
event log to the socket; one pump task per subscribed request.
"""
from __future__ import annotations

import asyncio
import logging
import uuid

from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from apps.accounts.models import Scope
from apps.accounts.services import api_key_authenticate, bearer_token_from_scope, require_scope
from apps.core import events
from apps.core.errors import AppError, AuthenticationError, NotFoundError

from .completions import chat_completion_submit, generation_events
from .models import GenerationRequest

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401


def _error(error: AppError, request_id: str | None = None) -> dict:
    message = {"type": "error", **error.as_body()}
    if request_id:
        message["request_id"] = request_id
    return message


class ChatConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.key = None
        self.pumps: dict[str, asyncio.Task] = {}
        self.graces: dict[str, float] = {}
        await self.accept()
        raw = bearer_token_from_scope(self.scope)
        if raw:
            await self._authenticate(raw)

    async def disconnect(self, code):
        # Pumps still here had not seen their request's final event: the request
        # may still run, and stops unless a client resumes within its grace.
        for request_id, task in self.pumps.items():
            task.cancel()
            await events.set_reader_deadline(request_id, self.graces.get(request_id, 0.0))
        self.pumps.clear()

    async def receive_json(self, content, **kwargs):
        if not isinstance(content, dict) or not isinstance(content.get("type"), str):
            await self.send_json(_error(AppError("Each message must be a JSON object with a 'type'.",
                                                 param="type", code="invalid_message")))
            return
        kind = content["type"]
        if kind == "auth":
            await self._authenticate(content.get("api_key") or "")
            return
        if self.key is None:
            await self.send_json(_error(AuthenticationError(
                "Authenticate first: send {\"type\": \"auth\", \"api_key\": ...} or an Authorization header.")))
            await self.close(CLOSE_UNAUTHENTICATED)
            return
        handler = {
            "chat.completion": self._on_completion,
            "cancel": self._on_cancel,
            "resume": self._on_resume,
        }.get(kind)
        if handler is None:
            await self.send_json(_error(AppError(f"Unknown message type '{kind}'.", param="type",
                                                 code="invalid_message")))
            return
        try:
            await handler(content)
        except AppError as error:
            await self.send_json(_error(error, content.get("request_id")))

    async def decode_json(self, text_data):
        try:
            return await super().decode_json(text_data)
        except ValueError:
            return None  # answered by receive_json as an invalid message

    async def _authenticate(self, raw_key: str) -> None:
        key = await sync_to_async(api_key_authenticate)(raw_key=raw_key) if raw_key else None
        if key is not None:
            try:
                require_scope(key, Scope.INFERENCE)
            except AppError as error:
                await self.send_json(_error(error))
                await self.close(CLOSE_UNAUTHENTICATED)
                return
        if key is None:
            await self.send_json(_error(AuthenticationError("Incorrect API key provided, or the key was revoked.")))
            await self.close(CLOSE_UNAUTHENTICATED)
            return
        self.key = key
        await self.send_json({"type": "authenticated", "user": key.user.username})

    def _grace(self, content: dict) -> float:
        value = content.get("resume_grace_seconds", settings.AIHUB_WS_RESUME_GRACE_SECONDS)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise AppError("resume_grace_seconds must be a number of seconds >= 0.", param="resume_grace_seconds")
        return min(float(value), settings.AIHUB_WS_RESUME_GRACE_MAX_SECONDS)

    async def _on_completion(self, content: dict) -> None:
        body = content.get("request")
        if not isinstance(body, dict):
            raise AppError("'request' must be a chat completion request object.", param="request")
        grace = self._grace(content)
        generation, _ = await chat_completion_submit(key=self.key, body={**body, "stream": True})
        request_id = str(generation.id)
        self.graces[request_id] = grace
        await self.send_json({"type": "accepted", "request_id": request_id, "model": generation.model,
                              "conversation_id": str(generation.conversation_id), "route": generation.route})
        self._subscribe(request_id, after_seq=0)

    async def _owned_request(self, content: dict) -> str:
        request_id = content.get("request_id")
        try:
            exists = await GenerationRequest.objects.filter(
                id=uuid.UUID(str(request_id)), user_id=self.key.user_id).aexists()
        except ValueError:  # not a UUID
            exists = False
        if not exists:
            raise NotFoundError(f"No request with id '{request_id}'.", param="request_id")
        return request_id

    async def _on_cancel(self, content: dict) -> None:
        request_id = await self._owned_request(content)
        await events.request_cancel(request_id)

    async def _on_resume(self, content: dict) -> None:
        request_id = await self._owned_request(content)
        after_seq = content.get("after_seq", 0)
        if isinstance(after_seq, bool) or not isinstance(after_seq, int) or after_seq < 0:
            raise AppError("after_seq must be an integer >= 0.", param="after_seq")
        self.graces[request_id] = self._grace(content)
        await events.clear_reader_deadline(request_id)
        self._subscribe(request_id, after_seq=after_seq)

    def _subscribe(self, request_id: str, *, after_seq: int) -> None:
        previous = self.pumps.get(request_id)
        if previous:
            previous.cancel()
        self.pumps[request_id] = asyncio.create_task(self._pump(request_id, after_seq))

    async def _pump(self, request_id: str, after_seq: int) -> None:
        try:
            async for event in generation_events(request_id, after_seq=after_seq):
                await self.send_json({"request_id": request_id, **event})
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("websocket pump for %s failed", request_id)
            await self.send_json(_error(AppError("Streaming failed on the server.", status=500,
                                                 type="server_error", code="stream_failed"), request_id))
        else:
            self.pumps.pop(request_id, None)
