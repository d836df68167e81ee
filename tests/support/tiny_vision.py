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
def _tokenizer(out_dir: Path, extra: list[str], named: dict[str, str] | None = None):
    """The tiny chat model's tokenizer with the image tokens `extra`; `named` gives some of them the
    attribute names a family's processor reads (Gemma 3: `tokenizer.boi_token`, `image_token_id`, ...)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_chat_model(out_dir.parent / "tiny-chat"),
                                              **({"model_specific_special_tokens": named} if named else {}))
    tokenizer.add_special_tokens({"additional_special_tokens": extra})
    return tokenizer


def _save(model, processor, tokenizer, out_dir: Path) -> Path:
    """Save a freshly built model with its processor (and tokenizer) in `out_dir`, as a checkpoint would be.

    As the tiny chat model, greedy decoding never ends the turn, so answers run to max_tokens.
    """
    import torch
    from transformers import GenerationConfig

    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head[tokenizer.eos_token_id].zero_()
        head.mul_(20)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir


def build_tiny_idefics3_model(out_dir: Path, *, seed: int = 0, image_size: int = 32, patch_size: int = 8,
                              vision_hidden: int = 32, vision_layers: int = 1, text_hidden: int = 64,
                              text_layers: int = 2) -> Path:
    """A tiny Idefics3 (the SmolVLM family): 1-layer SigLIP tower, 2-layer Llama, image splitting on.

    The sizes are the knobs a benchmark turns to get a model whose compute is not negligible (bench/vision.py);
    images are split into tiles of `image_size` pixels, at most 2x2 of them plus the global view.
    """
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
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
    return _save(Idefics3ForConditionalGeneration(config), processor, tokenizer, out_dir)


def build_tiny_llava_model(out_dir: Path, *, seed: int = 0) -> Path:
    """A tiny LLaVA: a 1-layer CLIP vision tower on 32-pixel images (16 patches: 16 image tokens once the
    class token is dropped), a projector, a 2-layer Llama. LLaVA has no notion of `detail`."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
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
    return _save(LlavaForConditionalGeneration(config), processor, tokenizer, out_dir)


def build_tiny_qwen2_vl_model(out_dir: Path, *, seed: int = 0, generation: str = "2") -> Path:
    """A tiny Qwen2-VL (`generation` "2.5": Qwen2.5-VL, whose vision tower attends in windows): a 1-layer
    vision tower on 14-pixel patches merged 2x2 (one image token per 28x28 pixels, between 56x56 and
    1280x28x28 pixels per image as the real ones), a 2-layer Qwen2 with multimodal rotary positions (M-RoPE:
    3-D position ids, offset after an image, workers/vision.py)."""
    import torch
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from workers.vision_processor import without_video

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    family = {"2": "Qwen2VL", "2.5": "Qwen2_5_VL"}[generation]
    tokenizer = _tokenizer(out_dir, ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"])
    images = Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": 1280 * 28 * 28},
                                      patch_size=14, merge_size=2, temporal_patch_size=2)
    # No torchvision here: the processor without its (torchvision-only) video processor (workers/vision_processor.py).
    processor = without_video(getattr(transformers, f"{family}Processor"))(
        image_processor=images, tokenizer=tokenizer,
        chat_template=PARTS_TEMPLATE.replace("{{ image_marker }}", "<|vision_start|><|image_pad|><|vision_end|>"))
    torch.manual_seed(seed)
    ids = tokenizer.convert_tokens_to_ids
    vision = {"depth": 1, "num_heads": 2, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
    if generation == "2":
        vision |= {"embed_dim": 32, "hidden_size": 64, "mlp_ratio": 2}
    else:
        vision |= {"hidden_size": 32, "intermediate_size": 64, "out_hidden_size": 64, "window_size": 56,
                   "fullatt_block_indexes": [0]}
    config = getattr(transformers, f"{family}Config")(
        vision_config=vision,
        # head size 16: 8 rotary frequencies split over time, height and width
        text_config={"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 4096, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                                          "mrope_section": [2, 3, 3]},
                     "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
                     "bos_token_id": None},
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    return _save(getattr(transformers, f"{family}ForConditionalGeneration")(config), processor, tokenizer, out_dir)


def build_tiny_gemma3_model(out_dir: Path, *, seed: int = 0) -> Path:
    """A tiny Gemma 3: a 1-layer SigLIP tower on 32-pixel images pooled to 4 image tokens, pan-and-scan
    crops of at least 16 pixels, and a 2-layer Gemma 3 text model whose first layer has a sliding window of
    16 tokens (shorter than the prompts, so decoding past the window is exercised)."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    tokenizer = _tokenizer(out_dir, ["<start_of_image>", "<end_of_image>", "<image_soft_token>"],
                           named={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                  "image_token": "<image_soft_token>"})
    images = Gemma3ImageProcessorPil(size={"height": 32, "width": 32}, pan_and_scan_min_crop_size=16,
                                     pan_and_scan_max_num_crops=4, pan_and_scan_min_ratio_to_activate=1.2)
    processor = Gemma3Processor(images, tokenizer, image_seq_length=4,
                                chat_template=PARTS_TEMPLATE.replace("{{ image_marker }}", "<start_of_image>"))
    torch.manual_seed(seed)
    ids = tokenizer.convert_tokens_to_ids
    config = Gemma3Config(
        vision_config={"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        text_config={"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                     "query_pre_attn_scalar": 16, "sliding_window": 16,
                     "layer_types": ["sliding_attention", "full_attention"], "max_position_embeddings": 4096,
                     "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
                     "bos_token_id": None},
        mm_tokens_per_image=4, boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"), tie_word_embeddings=False)
    return _save(Gemma3ForConditionalGeneration(config), processor, tokenizer, out_dir)
