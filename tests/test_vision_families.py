"""Qwen2-VL, Qwen2.5-VL and Gemma 3 through the official SDK and a real worker, as tiny random-weight models.

tests/test_vision.py covers images and video in chat with a tiny Idefics3 (SmolVLM); here the families whose
machinery differs: Qwen2-VL's image tokens per 28-pixel patch and its multimodal rotary positions (M-RoPE,
an offset every later position carries), and Gemma 3's pan-and-scan crops, sliding-window layers and
bidirectional attention over an image's tokens during the prefill. Expected prompt sizes come from each
model's own processor; expected answers from transformers' `generate`.
"""
from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from tests.support.media import data_url, image_bytes, video_bytes
from tests.support.processes import MODEL_CACHE
from tests.support.tiny_vision import build_tiny_gemma3_model, build_tiny_qwen2_vl_model
from tests.support.vision_engine import image_row_beside_text_rows

QWEN2_VL, QWEN2_5_VL, GEMMA3 = "tiny:qwen2-vl", "tiny:qwen2.5-vl", "tiny:gemma3"
BUILDERS = {
    QWEN2_VL: lambda: build_tiny_qwen2_vl_model(MODEL_CACHE / "tiny-qwen2-vl"),
    QWEN2_5_VL: lambda: build_tiny_qwen2_vl_model(MODEL_CACHE / "tiny-qwen2.5-vl", generation="2.5"),
    GEMMA3: lambda: build_tiny_gemma3_model(MODEL_CACHE / "tiny-gemma3"),
}
RED, GREEN = image_bytes((220, 30, 30)), image_bytes((30, 200, 60), size=(40, 90))
SQUARE = image_bytes((40, 60, 230), size=(112, 112))  # Qwen2-VL: 4x4 image tokens over 4x4 positions
# Gemma 3 pans and scans a picture at least 1.2 times as tall as wide into crops of at least 256 pixels.
TALL = image_bytes((90, 30, 160), size=(300, 700))


def processor_of(model_id: str):
    from workers.vision_processor import load_processor

    return load_processor(str(BUILDERS[model_id]()))


@pytest.fixture(scope="module")
def families(hub):
    for model_id, build in BUILDERS.items():
        call_command("importmodel", model_id, directory=build(), verbosity=0)  # kind detected: vision
    return list(BUILDERS)


def pictures(images: list[bytes]):
    from PIL import Image

    return [Image.open(io.BytesIO(data)).convert("RGB") for data in images]


def prompt_tokens(processor, content: list[dict], images: list[bytes], **options) -> int:
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)
    return len(processor(text=[text], images=pictures(images) or None, **options)["input_ids"][0])


def image_part(data: bytes, detail: str | None = None) -> dict:
    url = {"url": data_url(data)}
    if detail:
        url["detail"] = detail
    return {"type": "image_url", "image_url": url}


def ask(client, model: str, content):
    return client.chat.completions.create(model=model, max_tokens=4, temperature=0,
                                          messages=[{"role": "user", "content": content}])


# -- Qwen2-VL and Qwen2.5-VL -----------------------------------------------------------------------------------

@pytest.mark.parametrize("model_id", [QWEN2_VL, QWEN2_5_VL])
def test_a_qwen2_vl_image_counts_one_token_per_28_pixel_square(openai_client, families, model_id):
    completion = ask(openai_client, model_id, [{"type": "text", "text": "Compare"}, image_part(RED),
                                               image_part(SQUARE)])
    assert completion.model == model_id and completion.usage.completion_tokens == 4
    processor = processor_of(model_id)
    parts = [{"type": "text", "text": "Compare"}, {"type": "image"}, {"type": "image"}]
    assert completion.usage.prompt_tokens == prompt_tokens(processor, parts, [RED, SQUARE])
    # 100x60 resizes to 112x56 (4x2 tokens), 112x112 is 4x4: 24 image tokens beside the text.
    text_only = prompt_tokens(processor, [{"type": "text", "text": "Compare"}], [])
    assert completion.usage.prompt_tokens - text_only == 2 * 2 + 24  # each image: its start and end marks too


def test_qwen2_vl_detail_low_caps_the_pixels_of_a_large_image(openai_client, families):
    large = image_bytes((200, 200, 20), size=(640, 640))
    content = [{"type": "text", "text": "Describe"}]
    low = ask(openai_client, QWEN2_VL, content + [image_part(large, "low")]).usage.prompt_tokens
    high = ask(openai_client, QWEN2_VL, content + [image_part(large, "high")]).usage.prompt_tokens
    processor = processor_of(QWEN2_VL)
    parts = content + [{"type": "image"}]
    assert high == prompt_tokens(processor, parts, [large])  # the model's own budget: 23x23 tokens
    assert low == prompt_tokens(processor, parts, [large], size={"shortest_edge": 56 * 56,
                                                                 "longest_edge": 448 * 448})  # 16x16
    assert high - low == 23 * 23 - 16 * 16


def test_a_video_reaches_qwen2_vl_as_low_detail_frames_without_its_video_processor(openai_client, families):
    from apps.chat.models import GenerationRequest
    from apps.vision.models import StoredImage

    completion = ask(openai_client, QWEN2_VL, [{"type": "text", "text": "What happens?"}, {
        "type": "video_url", "video_url": {"url": data_url(video_bytes(seconds=2, size=64), "video/mp4")}}])
    video = GenerationRequest.objects.get(id=completion.id.removeprefix("chatcmpl-")).prompt_messages[0]["parts"][1]
    frames = [bytes(StoredImage.objects.get(id=image_id).data) for image_id in video["image_ids"]]
    content = [{"type": "text", "text": "What happens?"}, {"type": "text", "text": "Video (2 frames):"}]
    for seconds in video["times"]:
        content += [{"type": "text", "text": f" {seconds:.1f}s "}, {"type": "image"}]
    assert completion.usage.prompt_tokens == prompt_tokens(processor_of(QWEN2_VL), content, frames, size={
        "shortest_edge": 56 * 56, "longest_edge": 448 * 448})


# -- Gemma 3 ---------------------------------------------------------------------------------------------------

def test_a_gemma3_image_request_counts_its_image_tokens_and_high_detail_pans_and_scans(openai_client, families):
    processor = processor_of(GEMMA3)
    content = [{"type": "text", "text": "What is this?"}]
    plain = ask(openai_client, GEMMA3, content + [image_part(TALL)])
    assert plain.model == GEMMA3 and plain.choices[0].message.content and plain.usage.completion_tokens == 4
    parts = content + [{"type": "image"}]
    assert plain.usage.prompt_tokens == prompt_tokens(processor, parts, [TALL])
    assert plain.usage.prompt_tokens - prompt_tokens(processor, content, []) >= 4  # 4 soft tokens an image
    # High detail adds the picture's two crops (upper and lower half), low is the one view as auto is.
    low = ask(openai_client, GEMMA3, content + [image_part(TALL, "low")]).usage.prompt_tokens
    high = ask(openai_client, GEMMA3, content + [image_part(TALL, "high")]).usage.prompt_tokens
    assert low == plain.usage.prompt_tokens == prompt_tokens(processor, parts, [TALL], do_pan_and_scan=False)
    assert high == prompt_tokens(processor, parts, [TALL], do_pan_and_scan=True)
    assert high > low


# -- the engine against transformers ---------------------------------------------------------------------------

@pytest.mark.parametrize("model_id", [QWEN2_VL, QWEN2_5_VL, GEMMA3])
def test_an_image_row_decoded_in_the_batch_answers_as_transformers_generate_does(model_id):
    """The engine's way (prefill with pixel values, then decode among text rows in packed steps) against
    model.generate: for Qwen2-VL every decode position carries the prompt's M-RoPE offset; Gemma 3's prompt
    (about 40 tokens) is longer than its sliding window (16) and attends to its images' tokens both ways."""
    import torch

    from workers.engine import load_model

    loaded = load_model(model_id=model_id, path=str(BUILDERS[model_id]()), context_length=4096,
                        device=torch.device("cpu"), kind="vision")
    answer = image_row_beside_text_rows(
        loaded, [{"type": "image"}, {"type": "text", "text": "What is this?"}, {"type": "image"}],
        pictures([SQUARE, GREEN]), max_tokens=24)
    assert answer.result.text == answer.generated
    assert answer.result.prompt_tokens == answer.prompt_tokens
    if model_id != GEMMA3:
        assert answer.row.position_offset < 0  # the images' tokens took fewer positions than tokens
