"""/ws/v1/chat/: chat completions over a websocket, with cancel and resume.

The protocol is in docs/websocket.md. The consumer is thin: the key handshake
and its re-checks are ApiKeyConsumer's; it submits through the same function
as the REST view, and pumps the request's event log to the socket; one pump
task per subscribed request.
"""
from __future__ import annotations

import asyncio
import logging
import uuid

from django.conf import settings

from apps.accounts.models import ApiKey, Scope
from apps.accounts.websocket import ApiKeyConsumer, after_seq_of, error_message
from apps.core import events
from apps.core.errors import AppError, NotFoundError

from .completions import chat_completion_submit, generation_events, retrieval_field
from .models import GenerationRequest

logger = logging.getLogger(__name__)


class ChatConsumer(ApiKeyConsumer):
    required_scope = Scope.INFERENCE

    async def connect(self):
        self.pumps: dict[str, asyncio.Task] = {}
        self.graces: dict[str, float] = {}
        await super().connect()

    async def stop_streams(self):
        # Pumps still here had not seen their request's final event: the request
        # may still run, and stops unless a client resumes within its grace.
        for request_id, task in self.pumps.items():
            task.cancel()
            await events.set_reader_deadline(request_id, self.graces.get(request_id, 0.0))
        self.pumps.clear()

    def is_streaming(self) -> bool:
        return any(not task.done() for task in self.pumps.values())

    async def on_authenticated(self, key: ApiKey) -> bool:
        await self.send_json({"type": "authenticated", "user": key.user.username})
        return True

    async def on_message(self, kind: str, content: dict) -> None:
        handler = {
            "chat.completion": self._on_completion,
            "cancel": self._on_cancel,
            "resume": self._on_resume,
        }.get(kind)
        if handler is None:
            await self.send_json(error_message(AppError(f"Unknown message type '{kind}'.", param="type",
                                                        code="invalid_message")))
            return
        try:
            await handler(content)
        except AppError as error:
            extra = {"request_id": content["request_id"]} if content.get("request_id") else {}
            await self.send_json(error_message(error, **extra))

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
                              "conversation_id": str(generation.conversation_id), "route": generation.route,
                              **retrieval_field(generation)})
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
        after_seq = after_seq_of(content)
        await events.check_resume_point(request_id, after_seq)
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
            await self.send_json(error_message(AppError("Streaming failed on the server.", status=500,
                                                        type="server_error", code="stream_failed"),
                                               request_id=request_id))
        else:
            self.pumps.pop(request_id, None)
