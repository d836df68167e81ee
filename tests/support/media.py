"""Images and videos made in the test process (Pillow, PyAV): real files, as a client would send them."""
from __future__ import annotations

import base64
import io

COLOURS = [(220, 30, 30), (30, 200, 60), (40, 60, 230), (240, 220, 40), (200, 40, 200), (20, 200, 200)]


def image_bytes(colour=(220, 30, 30), size=(100, 60), format="PNG", mode="RGB") -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new(mode, size, colour if mode == "RGB" else 0)
    if mode == "RGB":
        ImageDraw.Draw(image).rectangle([size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2], fill=(0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def decompression_bomb() -> bytes:
    """A ~15 KB PNG that decodes to 100 million pixels."""
    return image_bytes(size=(10_000, 10_000), mode="1")


def video_bytes(*, seconds: float, fps: int = 10, size: int = 32, audio: bytes | None = None) -> bytes:
    """An MP4 (MPEG-4 part 2) whose colour changes every second, so each sampled frame is a different picture;
    with `audio` (any audio file, e.g. espeak-ng's WAV), that sound as its AAC audio track."""
    import av
    import numpy

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        track = container.add_stream("aac", rate=16000, layout="mono") if audio is not None else None
        for index in range(int(seconds * fps)):
            colour = COLOURS[(index // fps) % len(COLOURS)]
            pixels = numpy.zeros((size, size, 3), dtype=numpy.uint8)
            pixels[:] = colour
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if track is not None:
            resampler = av.AudioResampler(format="fltp", layout="mono", rate=16000)
            with av.open(io.BytesIO(audio)) as sound:
                for decoded in sound.decode(audio=0):
                    for frame in resampler.resample(decoded):
                        container.mux(track.encode(frame))
            for frame in resampler.resample(None):
                container.mux(track.encode(frame))
            container.mux(track.encode(None))
    return buffer.getvalue()


def silence_wav(seconds: float, rate: int = 16000) -> bytes:
    """A WAV of `seconds` of digital silence."""
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\0\0" * int(seconds * rate))
    return buffer.getvalue()


def video_with_garbled_audio(*, seconds: int = 2) -> bytes:
    """An MP4 whose picture is fine and whose AAC track is random bytes: it demuxes, but no decoder can read it."""
    import os

    import av
    import numpy

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=1)
        stream.width = stream.height = 16
        stream.pix_fmt = "yuv420p"
        track = container.add_stream("aac", rate=16000, layout="mono")
        for _ in range(seconds):
            frame = av.VideoFrame.from_ndarray(numpy.zeros((16, 16, 3), dtype=numpy.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        for index in range(seconds * 16):
            packet = av.Packet(os.urandom(200))
            packet.stream, packet.pts, packet.dts = track, index * 1024, index * 1024
            container.mux(packet)
    return buffer.getvalue()
