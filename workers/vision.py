"""A vision model's prompt: messages with image and video parts to token ids plus pixel inputs (docs/multimodal.md).

Runs in the request's task thread, not the engine's: reading the stored images and running the processor
(resizing, tiling, normalising) is CPU work that must not stall the running batch. The engine then prefills
the prompt with these inputs and the row joins the batch's decoding like any other (workers/batching.py).

The prompt counts every image token the processor expanded (an Idefics3/SmolVLM tile is 64 to 169 tokens,
a Qwen2-VL image one per 28x28 patch), so `prompt_tokens` in the usage includes them.

`detail` (OpenAI's low / high / auto) maps onto what the model's image processor has a notion of, for the
whole request: image splitting (Idefics3, SmolVLM: tiles plus a global view, or the global view only), the
pixel budget (Qwen2-VL: max_pixels) or pan-and-scan crops (Gemma 3). Every image "low" selects the cheap
setting, any image "high" the detailed one, otherwise the model's default. Video frames count as "low".
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import torch

from .engine import LoadedModel

LOW_DETAIL_MAX_PIXELS = 448 * 448  # Qwen2-VL: 256 image tokens at most per image (16 x 16 of 28 pixels)


@dataclass
class VisionPrompt:
    ids: list[int]
    inputs: dict  # the processor's tensors beside the ids (pixel_values, ...), on the model's device
    images: int  # images the model sees (video frames included)


def vision_prompt(loaded: LoadedModel, messages: list[dict]) -> VisionPrompt:
    """Token ids and pixel inputs for `messages` (stored prompt messages: `parts` where there are images)."""
    from PIL import Image

    from apps.vision.models import StoredImage

    wanted = [image_id for message in messages for image_id in _image_ids(message)]
    rows = {str(row.id): bytes(row.data) for row in StoredImage.objects.filter(id__in=set(wanted))}
    missing = [image_id for image_id in wanted if image_id not in rows]
    if missing:
        raise LookupError(f"the stored image {missing[0]} is gone")
    images = [Image.open(io.BytesIO(rows[image_id])).convert("RGB") for image_id in wanted]
    details = [d for message in messages for d in _details(message)]
    processor = loaded.processor
    text = processor.apply_chat_template([_template_message(m) for m in messages], add_generation_prompt=True,
                                         tokenize=False)
    encoded = processor(text=[text], images=images or None, return_tensors="pt",
                        **_detail_options(processor, details))
    dtype = next(p.dtype for p in loaded.model.parameters() if p.is_floating_point())
    inputs = {name: (value.to(loaded.device, dtype) if value.is_floating_point() else value.to(loaded.device))
              for name, value in encoded.items() if name not in ("input_ids", "attention_mask")}
    return VisionPrompt(encoded["input_ids"][0].tolist(), inputs if images else {}, len(images))


def _image_ids(message: dict) -> list[str]:
    ids = []
    for part in message.get("parts") or []:
        if part["type"] == "image":
            ids.append(part["image_id"])
        elif part["type"] == "video":
            ids.extend(part["image_ids"])
    return ids


def _details(message: dict) -> list[str]:
    details = []
    for part in message.get("parts") or []:
        if part["type"] == "image":
            details.append(part.get("detail") or "auto")
        elif part["type"] == "video":
            details.extend("low" for _ in part["image_ids"])
    return details


def _template_message(message: dict) -> dict:
    """A stored message in the shape processors' templates take: content as a list of typed parts."""
    parts = message.get("parts")
    if not parts:
        return {"role": message["role"], "content": [{"type": "text", "text": message["content"]}]}
    content = []
    for part in parts:
        if part["type"] == "text":
            content.append({"type": "text", "text": part["text"]})
        elif part["type"] == "image":
            content.append({"type": "image"})
        else:  # a video: its frames in order, each announced by its time, then what was said
            content.append({"type": "text", "text": f"Video ({len(part['image_ids'])} frames):"})
            for seconds in part["times"]:
                content.append({"type": "text", "text": f" {seconds:.1f}s "})
                content.append({"type": "image"})
            if part.get("transcript"):
                content.append({"type": "text", "text": f"\nAudio transcript: {part['transcript']}\n"})
    return {"role": message["role"], "content": content}


def _detail_options(processor, details: list[str]) -> dict:
    if not details or all(d == "auto" for d in details):
        return {}
    detailed = "high" in details
    if not detailed and not all(d == "low" for d in details):
        return {}
    images = processor.image_processor
    if hasattr(images, "do_image_splitting"):
        return {"do_image_splitting": detailed}
    if hasattr(images, "do_pan_and_scan"):
        return {"do_pan_and_scan": detailed}
    budget = _pixel_budget(images)
    if budget and not detailed:
        return {"size": {"shortest_edge": min(budget[0], LOW_DETAIL_MAX_PIXELS),
                         "longest_edge": min(budget[1], LOW_DETAIL_MAX_PIXELS)}}
    return {}


def _pixel_budget(images) -> tuple[int, int] | None:
    """Qwen2-VL's (and Qwen2.5-VL's) least and most pixels per image, None for other image processors.
    transformers 5 keeps them in `size` as shortest_edge / longest_edge (counts of pixels, not edges: the
    image is resized to about that area in 28-pixel units) and warns that `max_pixels` is going away."""
    size = getattr(images, "size", None)
    if not getattr(images, "merge_size", None) or size is None or not getattr(size, "longest_edge", None):
        return None
    return size.shortest_edge or 0, size.longest_edge


def rope_positions(model, ids: torch.Tensor, mask: torch.Tensor, inputs: dict) -> tuple[torch.Tensor, int] | None:
    """Multimodal rotary positions (M-RoPE: Qwen2-VL, Qwen2.5-VL) for a vision prefill: the prompt's 3-D
    position ids ([3, 1, tokens]: time, height, width) and the row's position offset; None for models whose
    positions are plain token indices.

    An image's tokens take the positions of its grid, fewer than its tokens (a 4x4 grid of image tokens spans
    4 positions, not 16), so the text after it continues from the largest position + 1, not from its index.
    Every later token is text, whose three positions are equal: its position is its index in the sequence plus
    the offset (`rope_deltas` in transformers, negative here), which the engine adds to the row's decode
    positions (workers/running_batch.py); the model expands those 2-D positions to three equal ones."""
    inner = getattr(model, "model", None)
    if not hasattr(inner, "get_rope_index") or "mm_token_type_ids" not in inputs:
        return None
    extra = {name: inputs[name] for name in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")
             if name in inputs}
    positions, deltas = inner.get_rope_index(ids, mm_token_type_ids=inputs["mm_token_type_ids"],
                                             attention_mask=mask, **extra)
    return positions, int(deltas[0])
