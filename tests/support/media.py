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


def video_bytes(*, seconds: float, fps: int = 10, size: int = 32) -> bytes:
    """An MP4 (MPEG-4 part 2) whose colour changes every second, so each sampled frame is a different picture."""
    import av
    import numpy

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for index in range(int(seconds * fps)):
            colour = COLOURS[(index // fps) % len(COLOURS)]
            pixels = numpy.zeros((size, size, 3), dtype=numpy.uint8)
            pixels[:] = colour
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()
