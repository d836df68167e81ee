"""Checking an image before it is stored: size, pixels, format, integrity (Pillow; no torch here).

Every refusal is an InvalidMedia, which the chat service turns into a 400 naming the part, before anything
is stored. The order matters: the byte count first (free), then the header (Pillow reads the dimensions
without decoding), the pixel count (a decompression bomb, a small file that decodes to gigapixels, stops
here, undecoded), the format, and only then the full decode, which catches truncated and corrupt data.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from django.conf import settings
from PIL import Image, UnidentifiedImageError

# Pillow's own bomb guard, set to the hub's limit: it warns past it and refuses twice past it. image_check
# refuses anything past the limit itself, from the header, before Pillow decodes a pixel.
Image.MAX_IMAGE_PIXELS = settings.AIHUB_VISION_MAX_IMAGE_PIXELS


class InvalidMedia(ValueError):
    """An image or video a request cannot use; `code` is the API's error code."""

    def __init__(self, message: str, code: str = "invalid_image"):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class CheckedImage:
    data: bytes
    format: str
    width: int
    height: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def image_check(data: bytes) -> CheckedImage:
    """The image in `data`, checked against the AIHUB_VISION_* limits; InvalidMedia if unusable."""
    max_bytes, max_pixels = settings.AIHUB_VISION_MAX_IMAGE_BYTES, settings.AIHUB_VISION_MAX_IMAGE_PIXELS
    if len(data) > max_bytes:
        raise InvalidMedia(f"The image is {len(data)} bytes; at most {max_bytes} are accepted.", "image_too_large")
    if not data:
        raise InvalidMedia("The image is empty.")
    with warnings.catch_warnings():
        # Pillow warns (and past twice its own limit raises) on huge images; our own limit decides first.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height, kind = image.width, image.height, image.format
                if width * height > max_pixels:
                    raise InvalidMedia(f"The image has {width}x{height} pixels; at most {max_pixels} pixels are "
                                       "accepted.", "image_too_large")
                if kind not in settings.AIHUB_VISION_IMAGE_FORMATS:
                    raise InvalidMedia(f"Images in {kind} format are not accepted; send one of "
                                       f"{', '.join(settings.AIHUB_VISION_IMAGE_FORMATS)}.", "unsupported_image_format")
                image.verify()  # the file's structure and checksums (PNG CRCs), without decoding pixels
            with Image.open(io.BytesIO(data)) as image:
                image.load()  # the pixels themselves: truncated or corrupt data fails here
        except InvalidMedia:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InvalidMedia(f"The image decodes to more than {max_pixels} pixels.", "image_too_large")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InvalidMedia(f"The image cannot be decoded ({_reason(exc)}); send a "
                               f"{', '.join(settings.AIHUB_VISION_IMAGE_FORMATS)} file.")
    return CheckedImage(data, kind, width, height)


def _reason(exc: Exception) -> str:
    text = str(exc).split("\n")[0][:200].replace(" <_io.BytesIO", "").split(" object at ")[0]
    return text or type(exc).__name__
