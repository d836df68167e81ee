"""Video parts: decoded with PyAV in the web process, sampled to frames that are stored as images.

Frames are taken every 1/AIHUB_VIDEO_FRAMES_PER_SECOND seconds, at most AIHUB_VIDEO_MAX_FRAMES of them (spread
evenly over the clip when a fixed rate would give more), scaled to AIHUB_VIDEO_FRAME_MAX_SIDE and stored as
PNG; the model then sees them as images in order, each announced by its time (docs/multimodal.md). Limits:
AIHUB_VIDEO_MAX_BYTES before decoding, AIHUB_VIDEO_MAX_SECONDS from the container, and decoding stops at
the last frame needed.

The audio track joins here: `video_transcript` is the hook where the hub's speech-to-text service gives
the clip's words, which the prompt then carries as a text part after the frames.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

from django.conf import settings

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

    limit = settings.AIHUB_VIDEO_MAX_BYTES
    if len(data) > limit:
        raise InvalidMedia(f"The video is {len(data)} bytes; at most {limit} are accepted.", "video_too_large")
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise InvalidMedia("The file holds no video stream.", "invalid_video")
            stream = container.streams.video[0]
            duration = _duration(container, stream)
            if duration > settings.AIHUB_VIDEO_MAX_SECONDS:
                raise InvalidMedia(f"The video lasts {duration:.1f} s; at most {settings.AIHUB_VIDEO_MAX_SECONDS:g} "
                                   "s are accepted.", "video_too_long")
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


def video_transcript(*, user, data: bytes) -> str | None:
    """HOOK (issue #14): the words spoken in the clip, or None when there are none or no service to hear them.

    The speech-to-text service (the audio work, merged separately) plugs in here: given the clip's bytes it
    returns the transcript, which the prompt carries as "Audio transcript: ..." after the frames. Until it
    is wired, a video reaches the model as its frames only.
    """
    return None


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
