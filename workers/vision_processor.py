"""A vision model's processor, loaded without torchvision when the model's own processor insists on it.

transformers 5 builds every processor that lists a `video_processor` (Qwen2-VL, Qwen2.5-VL and their kin)
with one, and its video processors all need torchvision, even for requests with images only
(huggingface/transformers#48558). The hub does not install torchvision: the PyPI build for the pinned CPU
torch does not import beside it, and a matching one would bring a CUDA torch (docs/models.md). The images
side of these processors is Pillow-based, and a video reaches the model as frames, which are images
(workers/vision.py), so the video processor is never called: where it cannot be made, the processor is
made without it.
"""
from __future__ import annotations

import inspect
import json
import logging
from functools import cache
from pathlib import Path

from transformers import AutoProcessor

logger = logging.getLogger(__name__)


def load_processor(path: str):
    """The processor saved at `path`, as AutoProcessor loads it, or without its video processor where that
    needs torchvision."""
    try:
        return AutoProcessor.from_pretrained(path)
    except (ImportError, OSError, AttributeError, TypeError, ValueError) as error:
        processor_class = _saved_processor_class(path)
        if processor_class is None or not _takes_video_processor(processor_class) or _has_torchvision():
            raise
        logger.info("loading %s without its video processor (%s)", processor_class.__name__, error)
        return without_video(processor_class).from_pretrained(path)


@cache
def without_video(processor_class: type) -> type:
    """`processor_class` with no `video_processor` in its constructor: transformers makes (and checks) a
    processor's parts by the names its __init__ takes. The object answers `video_processor` with None."""

    class ImagesOnly(processor_class):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)
            self.video_processor = None

    # Saved under the real class's name, so a processor saved from it loads with AutoProcessor elsewhere.
    ImagesOnly.__name__ = ImagesOnly.__qualname__ = processor_class.__name__
    return ImagesOnly


def _takes_video_processor(processor_class: type) -> bool:
    return "video_processor" in inspect.signature(processor_class.__init__).parameters


def _has_torchvision() -> bool:
    from transformers.utils import is_torchvision_available

    return is_torchvision_available()


def _saved_processor_class(path: str) -> type | None:
    import transformers

    for name in ("processor_config.json", "preprocessor_config.json"):
        file = Path(path) / name
        if file.is_file():
            class_name = json.loads(file.read_text()).get("processor_class")
            if class_name and hasattr(transformers, class_name):
                return getattr(transformers, class_name)
    return None
