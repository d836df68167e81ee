"""Turning a request's image and video parts into stored images referenced by id (docs/multimodal.md).

Runs inside chat_completion_create's transaction, before anything else is written: a part that fails any
check is a 400 naming it, and the transaction rolls back every image this request had stored so far, so a
refused request stores nothing. What the prompt then holds per part:

    {"type": "text", "text": ...}
    {"type": "image", "image_id": "<uuid>", "detail": "auto" | "low" | "high"}
    {"type": "video", "image_ids": [...], "times": [seconds, ...], "transcript": str | None}

A video part is heard first, in chat's async step before the transaction (`video_parts_heard`, called by
apps/audio/chat_input.py): its bytes are fetched once and its audio track transcribed, and the part carries
both (`source: {"data": bytes}`, `transcript`) into the storing here.
"""
from __future__ import annotations

import asyncio

from asgiref.sync import sync_to_async
from django.conf import settings

from apps.core.errors import AppError

from .images import CheckedImage, InvalidMedia, image_check
from .models import StoredImage
from .sources import data_url_bytes, remote_bytes
from .video import video_sample, video_transcript


async def video_parts_heard(*, user, api_key, messages: list[dict]) -> list[dict]:
    """`messages` with each video part's source fetched and its audio track transcribed (`video_transcript`),
    all the request's clips at once; a bad clip is the 400 storing it would be, raised before anything waits."""
    videos = [(index, number) for index, message in enumerate(messages)
              for number, part in enumerate(message.get("parts") or []) if part["type"] == "video"]
    if not videos:
        return messages

    async def heard(index: int, number: int) -> dict:
        part, param = messages[index]["parts"][number], f"messages[{index}].content[{number}]"
        try:
            data = await sync_to_async(_source_bytes)(user, part["source"], kind="video",
                                                      limit=settings.AIHUB_VIDEO_MAX_BYTES)
            transcript = await video_transcript(user=user, api_key=api_key, data=data)
        except InvalidMedia as exc:
            raise AppError(str(exc), param=param, code=exc.code)
        except AppError as error:
            error.param = error.param or param
            raise
        return {**part, "source": {"data": data}, "transcript": transcript}

    parts = await asyncio.gather(*(heard(index, number) for index, number in videos))
    messages = [dict(message) for message in messages]
    for (index, number), part in zip(videos, parts):
        messages[index]["parts"] = list(messages[index]["parts"])
        messages[index]["parts"][number] = part
    return messages


def message_parts_store(*, user, messages: list[dict]) -> list[dict]:
    """`messages` with each raw content part list (`parts`, from the serializer) replaced by stored parts."""
    resolved = []
    for index, message in enumerate(messages):
        parts = message.get("parts")
        if parts:
            message = {**message, "parts": [_stored_part(user, part, param=f"messages[{index}].content[{number}]")
                                            for number, part in enumerate(parts)]}
        resolved.append(message)
    return resolved


def _stored_part(user, part: dict, *, param: str) -> dict:
    try:
        if part["type"] == "text":
            return part
        if part["type"] == "video":
            data = _source_bytes(user, part["source"], kind="video", limit=settings.AIHUB_VIDEO_MAX_BYTES)
            video = video_sample(data)
            return {"type": "video", "image_ids": [_store(user, frame) for frame in video.frames],
                    "times": video.times, "transcript": part.get("transcript")}
        data = _source_bytes(user, part["source"], kind="image", limit=settings.AIHUB_VISION_MAX_IMAGE_BYTES)
        return {"type": "image", "image_id": _store(user, image_check(data)), "detail": part["detail"]}
    except InvalidMedia as exc:
        raise AppError(str(exc), param=param, code=exc.code)


def _source_bytes(user, source: dict, *, kind: str, limit: int) -> bytes:
    if "data" in source:  # a video's bytes, fetched when it was heard (video_parts_heard)
        return source["data"]
    if "file_id" in source:
        return _file_bytes(user, source["file_id"], limit=limit)
    url = source["url"]
    if url.startswith("data:"):
        return data_url_bytes(url, kind=kind)
    return remote_bytes(url, limit=limit)


def _file_bytes(user, file_id: str, *, limit: int) -> bytes:
    from apps.training.selectors import training_file_get

    record = training_file_get(user=user, file_id=file_id, param="file_id")  # another user's file: 404
    if record.bytes > limit:
        raise InvalidMedia(f"The file '{file_id}' is {record.bytes} bytes; at most {limit} are accepted.",
                           "image_too_large")
    try:
        with open(record.path, "rb") as handle:
            return handle.read(limit + 1)
    except OSError:
        raise InvalidMedia(f"The file '{file_id}' cannot be read.", "file_unreadable")


def _store(user, image: CheckedImage) -> str:
    """The id of the user's stored copy of `image`, storing it unless the same bytes are stored already."""
    StoredImage.objects.bulk_create([StoredImage(user=user, sha256=image.sha256, format=image.format,
                                                 width=image.width, height=image.height, bytes=len(image.data),
                                                 data=image.data)], ignore_conflicts=True)
    return str(StoredImage.objects.filter(user=user, sha256=image.sha256).values_list("id", flat=True).get())


def vision_file_check(data: bytes) -> str:
    """What an upload with purpose `vision` holds, "image" or "video"; InvalidMedia if it is neither."""
    try:
        image_check(data)
        return "image"
    except InvalidMedia as image_error:
        if image_error.code != "invalid_image":
            raise
        try:
            video_sample(data)
        except InvalidMedia:
            raise image_error
        return "video"


def part_image_ids(parts) -> set[str]:
    """The stored images a message's parts reference (its images and its videos' frames)."""
    ids = set()
    for part in parts or []:
        if part.get("type") == "image":
            ids.add(part["image_id"])
        elif part.get("type") == "video":
            ids.update(part["image_ids"])
    return ids


def stored_images_release(*, user, image_ids: set[str]) -> int:
    """Delete those of `image_ids` no message of the user references any more (after a conversation was
    deleted); returns how many went. An image is stored once per user, so another conversation may still
    show it: jsonb containment finds a reference in a message's parts, image or video frame alike."""
    from apps.chat.models import Message

    unused = [image_id for image_id in image_ids
              if not Message.objects.filter(conversation__user=user, parts__contains=[{"image_id": image_id}]).exists()
              and not Message.objects.filter(conversation__user=user,
                                             parts__contains=[{"image_ids": [image_id]}]).exists()]
    return StoredImage.objects.filter(user=user, id__in=unused).delete()[0]
