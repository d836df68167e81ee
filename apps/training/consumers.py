"""/ws/v1/training/<job id>/: a job's live events (progress, checkpoints, the end), resumable by sequence number."""
from __future__ import annotations

import asyncio

from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from apps.accounts.models import Scope
from apps.accounts.services import api_key_authenticate, bearer_token_from_scope
from apps.core import events
from apps.core.errors import AppError, AuthenticationError, NotFoundError

from .selectors import training_job_get

CLOSE_UNAUTHENTICATED = 4401


class TrainingProgressConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.job = None
        self.pump = None
        await self.accept()
        raw = bearer_token_from_scope(self.scope)
        if raw:
            await self._authenticate(raw)

    async def disconnect(self, code):
        if self.pump:
            self.pump.cancel()

    async def receive_json(self, content, **kwargs):
        kind = content.get("type") if isinstance(content, dict) else None
        if kind == "auth":
            await self._authenticate(content.get("api_key") or "")
        elif self.job is None:
            await self._refuse(AuthenticationError("Authenticate first: {\"type\": \"auth\", \"api_key\": ...}."))
        elif kind == "subscribe":
            after = content.get("after_seq", 0)
            if isinstance(after, bool) or not isinstance(after, int) or after < 0:
                await self.send_json({"type": "error", **AppError("after_seq must be an integer >= 0.",
                                                                  param="after_seq").as_body()})
                return
            if self.pump:
                self.pump.cancel()
            self.pump = asyncio.create_task(self._stream(after))
        else:
            await self.send_json({"type": "error", **AppError("Send 'subscribe' (with after_seq).",
                                                              param="type", code="invalid_message").as_body()})

    async def _refuse(self, error: AppError):
        await self.send_json({"type": "error", **error.as_body()})
        await self.close(CLOSE_UNAUTHENTICATED)

    async def _authenticate(self, raw_key: str):
        key = await sync_to_async(api_key_authenticate)(raw_key=raw_key) if raw_key else None
        if key is None or not key.has_scope(Scope.TRAINING):
            await self._refuse(AuthenticationError("Incorrect, revoked or non-training API key."))
            return
        try:
            self.job = await sync_to_async(training_job_get)(user=key.user, job_id=self.scope["url_route"]["kwargs"]
                                                             ["job_id"])
        except NotFoundError as error:
            await self.send_json({"type": "error", **error.as_body()})
            await self.close(4404)
            return
        await self.send_json({"type": "authenticated", "job_id": self.job.public_id, "status": self.job.status})

    async def _stream(self, after_seq: int):
        # A job can run for hours with long quiet spells: no idle timeout.
        async for event in events.read_events(self.job.id, after_seq=after_seq, idle_timeout=float("inf")):
            await self.send_json(event)
