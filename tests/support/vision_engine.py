"""An image request decoded in the batching engine, beside text rows, against `model.generate` (tests of vision).

The worker's way: the image prompt is prefilled with its pixel inputs, then decodes among text rows in the
engine's packed steps. Its greedy text must be what transformers' own `generate` makes of the same inputs.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineAnswer:
    row: object  # the image request's Sequence (its position_offset, ...)
    result: object  # what the engine answered for it (text, prompt_tokens, ...)
    generated: str  # model.generate's greedy text for the same inputs
    prompt_tokens: int  # the processor's prompt length, image tokens included


def image_row_beside_text_rows(loaded, content: list[dict], images: list, *, max_tokens: int) -> EngineAnswer:
    """Run one user message `content` (image parts as {"type": "image"}, `images` as PIL images) through the
    engine beside two 40-token text requests, which must run to their end too, and through model.generate."""
    import torch

    from workers.batching import BatchEngine
    from workers.sequence import DONE, FAILED, Sequence
    from workers.vision import VisionPrompt

    def encoded(parts, pictures):
        text = loaded.processor.apply_chat_template([{"role": "user", "content": parts}],
                                                    add_generation_prompt=True, tokenize=False)
        return loaded.processor(text=[text], images=pictures or None, return_tensors="pt")

    def row(request_id, inputs, tokens):
        sequence = Sequence(request_id=request_id, messages=[], params={"max_tokens": tokens, "temperature": 0})
        sequence.vision = VisionPrompt(inputs["input_ids"][0].tolist(),
                                       {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}, 0)
        return sequence

    def answer(sequence):
        while (item := sequence.outbox.get(timeout=120))[0] != DONE:
            assert item[0] != FAILED, item
        return item[2]

    image = encoded(content, images)
    prompt_tokens = image["input_ids"].shape[1]
    with torch.inference_mode():
        expected = loaded.model.generate(**image, max_new_tokens=max_tokens, do_sample=False)[0, prompt_tokens:]
    engine = BatchEngine(max_batch_size=8, max_batch_tokens=4096, cache_budget=lambda: 2**30)
    texts = [row(f"text{index}", encoded([{"type": "text", "text": f"Story {index}"}], []), 40) for index in range(2)]
    pictured = row("image", image, max_tokens)
    for sequence in texts + [pictured]:
        engine.submit(loaded, sequence)
    result = answer(pictured)
    for text in texts:
        answer(text)
    return EngineAnswer(pictured, result, loaded.tokenizer.decode(expected, skip_special_tokens=True), prompt_tokens)
