"""Video parts: decoded with PyAV in the web process, sampled to frames that are stored as images.

Frames are taken every 1/AIHUB_VIDEO_FRAMES_PER_SECOND seconds, at most AIHUB_VIDEO_MAX_FRAMES of them (spread
evenly over the clip when a fixed rate would give more), scaled to AIHUB_VIDEO_FRAME_MAX_SIDE and stored as
PNG; the model then sees them as images in order, each announced by its time (docs/multimodal.md). Limits:
AIHUB_VIDEO_MAX_BYTES before decoding, AIHUB_VIDEO_MAX_SECONDS from the container, and decoding stops at
the last frame needed.

The audio track: `video_transcript` copies it out of the clip (packets remuxed, nothing decoded here) and has
the worker that owns the default transcription model hear it (apps/audio/services.py::transcribe); the prompt
carries its words as "Audio transcript: ..." after the frames. It runs in chat's async step before anything is
stored (apps/audio/chat_input.py), so no database connection is held while the worker listens.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

from django.conf import settings

from apps.core.errors import AppError

from .images import CheckedImage, InvalidMedia, image_check


@dataclass(frozen=True)
class SampledVideo:
    frames: list[CheckedImage]
    times: list[float]  # each frame's time in the clip, seconds
    duration: float
    has_audio: bool


def video_sample(data: bytes) -> SampledVideo:
    """The frames of the clip in `data` the model will see; InvalidMedia for a clip the hub cannot use."""
    import av  # PyAV: only the processes that decode video pay for importing FFmpeg

    _size_check(data)
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream, duration = _checked_stream(container)
            wanted = sample_times(duration)
            frames, times = [], []
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                if frame.time + 1e-6 >= wanted[len(frames)]:
                    frames.append(_stored_frame(frame.to_image()))
                    times.append(round(float(frame.time), 3))
                    if len(frames) == len(wanted):
                        break
            has_audio = bool(container.streams.audio)
    except InvalidMedia:
        raise
    except (av.error.FFmpegError, ValueError, OSError, IndexError) as exc:
        raise InvalidMedia(f"The video cannot be decoded ({str(exc)[:200] or type(exc).__name__}).", "invalid_video")
    if not frames:
        raise InvalidMedia("The video has no decodable frames.", "invalid_video")
    return SampledVideo(frames, times, duration, has_audio)


def sample_times(duration: float) -> list[float]:
    """When to take frames: every 1/rate seconds from 0, or AIHUB_VIDEO_MAX_FRAMES spread evenly if fewer."""
    rate, most = settings.AIHUB_VIDEO_FRAMES_PER_SECOND, max(1, settings.AIHUB_VIDEO_MAX_FRAMES)
    count = max(1, math.ceil(duration * rate - 1e-9))  # 0, 1/rate, 2/rate ... before the end
    if count <= most:
        return [round(index / rate, 6) for index in range(count)]
    return [round(index * duration / most, 6) for index in range(most)]


async def video_transcript(*, user, api_key, data: bytes) -> str | None:
    """The words spoken in the clip, or None when it has no audio track or nothing is said in it.

    Heard by the worker that owns the default transcription model, under the key's limits as a transcription
    is. InvalidMedia for a track the worker cannot decode (`invalid_video`) or a clip over the video limits;
    other refusals (a full queue, the key's limits) are raised as the AppError they are.
    """
    from asgiref.sync import sync_to_async

    from apps.audio.services import transcribe

    track = await sync_to_async(video_audio_track)(data)
    if track is None:
        return None
    try:
        result = await transcribe(user=user, api_key=api_key, audio=track)
    except AppError as error:
        if error.status != 400 or error.code not in _AUDIO_REFUSALS:
            raise
        raise InvalidMedia(f"The video's audio track: {error.message}", _AUDIO_REFUSALS[error.code]) from None
    # Silence comes back as no text: Whisper drops windows it judges speechless (no_speech_prob).
    return result["text"].strip() or None


MIN_TRACK_SECONDS = 0.2
# The transcription's refusals of the audio it was given, as the video refusals they are.
_AUDIO_REFUSALS = {"invalid_audio": "invalid_video", "audio_too_long": "video_too_long",
                   "audio_too_large": "video_too_large"}


def video_audio_track(data: bytes) -> bytes | None:
    """The clip's first audio track alone, its packets copied into a Matroska file (which takes any codec), or
    None when the clip has none (or one shorter than MIN_TRACK_SECONDS). Nothing is decoded here: the worker
    decodes, and refuses what it cannot read. The clip's limits apply first, so a clip that would be refused is
    never sent to be heard."""
    import av

    _size_check(data)
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            _checked_stream(container)
            if not container.streams.audio:
                return None
            source = container.streams.audio[0]
            buffer, start, end = io.BytesIO(), math.inf, 0.0
            with av.open(buffer, mode="w", format="matroska") as out:
                target = out.add_stream_from_template(source)
                for packet in container.demux(source):
                    if packet.dts is None:  # the demuxer's flush packet
                        continue
                    if packet.pts is not None and packet.time_base is not None:
                        at = float(packet.pts * packet.time_base)
                        start, end = min(start, at), max(end, at + float((packet.duration or 0) * packet.time_base))
                    # A track running on past the picture is held to the clip's limit too.
                    if end > settings.AIHUB_VIDEO_MAX_SECONDS + 1:
                        raise InvalidMedia(f"The video's audio track lasts more than "
                                           f"{settings.AIHUB_VIDEO_MAX_SECONDS:g} s, the most accepted.",
                                           "video_too_long")
                    packet.stream = target
                    out.mux(packet)
    except InvalidMedia:
        raise
    except (av.error.FFmpegError, ValueError, OSError, IndexError) as exc:
        raise InvalidMedia(f"The video's audio track cannot be read ({str(exc)[:200] or type(exc).__name__}).",
                           "invalid_video")
    # An empty track, or a blip too short to hold a word, is no speech rather than audio the worker refuses.
    return buffer.getvalue() if end - start >= MIN_TRACK_SECONDS else None


def _size_check(data: bytes) -> None:
    limit = settings.AIHUB_VIDEO_MAX_BYTES
    if len(data) > limit:
        raise InvalidMedia(f"The video is {len(data)} bytes; at most {limit} are accepted.", "video_too_large")


def _checked_stream(container):
    """The clip's video stream and duration; InvalidMedia for a file without one or over AIHUB_VIDEO_MAX_SECONDS."""
    if not container.streams.video:
        raise InvalidMedia("The file holds no video stream.", "invalid_video")
    stream = container.streams.video[0]
    duration = _duration(container, stream)
    if duration > settings.AIHUB_VIDEO_MAX_SECONDS:
        raise InvalidMedia(f"The video lasts {duration:.1f} s; at most {settings.AIHUB_VIDEO_MAX_SECONDS:g} "
                           "s are accepted.", "video_too_long")
    return stream, duration


def _duration(container, stream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # av.time_base: microseconds
    raise InvalidMedia("The video does not say how long it is.", "invalid_video")


def _stored_frame(image) -> CheckedImage:
    side = settings.AIHUB_VIDEO_FRAME_MAX_SIDE
    image = image.convert("RGB")
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return image_check(buffer.getvalue())
