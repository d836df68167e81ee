"""Tiny random-weight vision-language models built on the fly from real configs (no downloads).

Each reuses the tiny chat model's byte-level tokenizer (tests/support/tiny_models.py), adds the family's
image tokens, and saves model, tokenizer and processor together, so `importmodel --directory` and the
worker load them exactly as they would a real checkpoint (AutoModelForImageTextToText + AutoProcessor).
The processors are the Pillow ones, which need nothing beyond Pillow and numpy.
"""
from __future__ import annotations

from pathlib import Path

from tests.support.tiny_models import build_tiny_chat_model

# ChatML over content parts: what SmolVLM's and Qwen2-VL's own templates do, in a few lines.
PARTS_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ image_marker }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
def _tokenizer(out_dir: Path, extra: list[str]):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_chat_model(out_dir.parent / "tiny-chat"))
    tokenizer.add_special_tokens({"additional_special_tokens": extra})
    return tokenizer


def _quiet_eos(model, tokenizer) -> None:
    """As the tiny chat model: greedy decoding never ends the turn, so answers run to max_tokens."""
    import torch

    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head[tokenizer.eos_token_id].zero_()
        head.mul_(20)


def build_tiny_idefics3_model(out_dir: Path, *, seed: int = 0, image_size: int = 32, patch_size: int = 8,
                              vision_hidden: int = 32, vision_layers: int = 1, text_hidden: int = 64,
                              text_layers: int = 2) -> Path:
    """A tiny Idefics3 (the SmolVLM family): 1-layer SigLIP tower, 2-layer Llama, image splitting on.

    The sizes are the knobs a benchmark turns to get a model whose compute is not negligible (bench/vision.py);
    images are split into tiles of `image_size` pixels, at most 2x2 of them plus the global view.
    """
    import torch
    from transformers import GenerationConfig, Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    tokenizer = _tokenizer(out_dir, ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
                           + [f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)])
    images = Idefics3ImageProcessorPil(size={"longest_edge": 2 * image_size},
                                       max_image_size={"longest_edge": image_size}, do_image_splitting=True)
    processor = Idefics3Processor(images, tokenizer, image_seq_len=(image_size // patch_size) ** 2 // 4,
                                  chat_template=PARTS_TEMPLATE.replace("{{ image_marker }}", "<image>"))
    torch.manual_seed(seed)
    config = Idefics3Config(
        vision_config={"hidden_size": vision_hidden, "intermediate_size": 2 * vision_hidden,
                       "num_hidden_layers": vision_layers, "num_attention_heads": 2, "image_size": image_size,
                       "patch_size": patch_size},
        text_config={"model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": text_hidden,
                     "intermediate_size": 2 * text_hidden, "num_hidden_layers": text_layers,
                     "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 4096, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        scale_factor=2, image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    model = Idefics3ForConditionalGeneration(config)
    _quiet_eos(model, tokenizer)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir


def build_tiny_llava_model(out_dir: Path, *, seed: int = 0) -> Path:
    """A tiny LLaVA: a 1-layer CLIP vision tower on 32-pixel images (16 patches: 16 image tokens once the
    class token is dropped), a projector, a 2-layer Llama. LLaVA has no notion of `detail`."""
    import torch
    from transformers import GenerationConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    tokenizer = _tokenizer(out_dir, ["<image>"])
    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", image_token="<image>",
                               num_additional_image_tokens=1,
                               chat_template=PARTS_TEMPLATE.replace("{{ image_marker }}", "<image>"))
    torch.manual_seed(seed)
    config = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        text_config={"model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 4096, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-1)
    model = LlavaForConditionalGeneration(config)
    _quiet_eos(model, tokenizer)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir
