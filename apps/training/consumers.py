"""/ws/v1/training/<job id>/: a job's live events (progress, checkpoints, the end), resumable by sequence number."""
from __future__ import annotations

import asyncio

from asgiref.sync import sync_to_async

from apps.accounts.models import ApiKey, Scope
from apps.accounts.websocket import ApiKeyConsumer, after_seq_of, error_message
from apps.core import events
from apps.core.errors import AppError, NotFoundError

from .selectors import training_job_get

CLOSE_NOT_FOUND = 4404


class TrainingProgressConsumer(ApiKeyConsumer):
    required_scope = Scope.TRAINING

    async def connect(self):
        self.job = None
        self.pump = None
        await super().connect()

    async def stop_streams(self):
        if self.pump:
            self.pump.cancel()
            self.pump = None

    def is_streaming(self) -> bool:
        return self.pump is not None and not self.pump.done()

    async def on_authenticated(self, key: ApiKey) -> bool:
        try:
            self.job = await sync_to_async(training_job_get)(user=key.user,
                                                             job_id=self.scope["url_route"]["kwargs"]["job_id"])
        except NotFoundError as error:
            await self.refuse(error, code=CLOSE_NOT_FOUND)
            return False
        await self.send_json({"type": "authenticated", "job_id": self.job.public_id, "status": self.job.status})
        return True

    async def on_message(self, kind: str, content: dict) -> None:
        if kind != "subscribe":
            await self.send_json(error_message(AppError("Send 'subscribe' (with after_seq).", param="type",
                                                        code="invalid_message")))
            return
        try:
            after = after_seq_of(content)
            await events.check_resume_point(self.job.id, after)
        except AppError as error:
            await self.send_json(error_message(error))
            return
        await self.stop_streams()
        self.pump = asyncio.create_task(self._stream(after))

    async def _stream(self, after_seq: int):
        # A job can run for hours with long quiet spells: no idle timeout.
        async for event in events.read_events(self.job.id, after_seq=after_seq, idle_timeout=float("inf")):
            await self.send_json(event)
