"""The speech in a chat request, heard before the request is validated against the model and stored: `input_audio`
content parts, transcribed by the worker that owns the speech-to-text model and put into the message as text where
the part was, and the audio tracks of video parts (apps/vision/services.py::video_parts_heard), whose transcripts
the video parts carry. All of them are heard at once, with no database connection held while the workers listen.

The transcript goes in as `[audio transcript: <text>]` (docs/multimodal.md), so the model can tell what was said
from what was typed, and the stored conversation keeps what the model saw. The catalog has no chat model that
takes audio itself, so every part is transcribed, with AIHUB_DEFAULT_TRANSCRIPTION_MODEL.
"""
from __future__ import annotations

import asyncio
import base64

from apps.core.errors import AppError
from apps.vision.services import video_parts_heard

from .services import transcribe


def transcript_text(text: str) -> str:
    return f"[audio transcript: {text}]"


def _joined(text: str, inserts: list[tuple[int, str]]) -> str:
    """`text` with each (offset, insert) put in, a space apart from the text around it."""
    for at, insert in sorted(inserts, reverse=True):  # from the end: earlier offsets stay valid
        before, after = text[:at], text[at:]
        if before and not before[-1].isspace():
            insert = " " + insert
        if after and not after[0].isspace():
            insert += " "
        text = before + insert + after
    return text


async def chat_audio_transcribed(*, user, api_key, data: dict) -> dict:
    """`data` (validated chat input) with every message's audio parts replaced by their transcripts and every
    video part carrying its audio track's."""
    audio, videos = await asyncio.gather(
        _audio_parts_transcribed(user=user, api_key=api_key, messages=data["messages"]),
        video_parts_heard(user=user, api_key=api_key, messages=data["messages"]))
    if audio is data["messages"] and videos is data["messages"]:
        return data
    # The two change different keys of a message: "content" (and "audio") and "parts".
    return {**data, "messages": [{**spoken, "parts": heard["parts"]} if heard.get("parts") else spoken
                                 for spoken, heard in zip(audio, videos)]}


async def _audio_parts_transcribed(*, user, api_key, messages: list[dict]) -> list[dict]:
    parts = [(index, part) for index, message in enumerate(messages) for part in message.get("audio", [])]
    if not parts:
        return messages

    async def one(index: int, part: dict) -> str:
        try:
            result = await transcribe(user=user, api_key=api_key, audio=base64.b64decode(part["data"]))
        except AppError as error:
            raise AppError(f"messages[{index}]: input_audio: {error.message}", status=error.status, type=error.type,
                           param="messages", code=error.code) from None
        return transcript_text(result["text"])

    texts = await asyncio.gather(*(one(index, part) for index, part in parts))
    messages = [dict(message) for message in messages]
    inserts: dict[int, list[tuple[int, str]]] = {}
    for (index, part), text in zip(parts, texts):
        inserts.setdefault(index, []).append((part["at"], text))
    for index, pending in inserts.items():
        messages[index]["content"] = _joined(messages[index]["content"], pending)
        del messages[index]["audio"]
    return messages
