"""Whisper's CTranslate2 files as transformers' WhisperForConditionalGeneration: the other runtime the hub could use.

Used by bench/audio.py to choose the runtime by measurement (docs/models.md, "Audio models"). The tensors map one
to one, except that CTranslate2 fuses projections: self-attention's q, k and v into one linear (k has no bias in
Whisper: its slice of the fused bias is zero), and cross-attention's k and v into another. The names are those
ctranslate2/converters/transformers.py writes for Whisper.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from apps.catalog.footprint import ctranslate2_variables

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": None, "int8": np.int8,
                "int16": np.int16, "int32": np.int32}


def _tensors(model_bin: Path) -> dict[str, torch.Tensor]:
    out = {}
    with open(model_bin, "rb") as f:
        for name, (shape, dtype, offset) in ctranslate2_variables(model_bin).items():
            if not shape:
                continue  # scalars: flags and head counts, not weights
            f.seek(offset)
            count = int(np.prod(shape))
            array = np.frombuffer(f.read(count * np.dtype(NUMPY_DTYPES[dtype]).itemsize), NUMPY_DTYPES[dtype])
            out[name] = torch.from_numpy(array.reshape(shape).astype(np.float32))
    return out


def _layer_count(tensors: dict, side: str) -> int:
    return len({name.split("/")[1] for name in tensors if re.match(rf"{side}/layer_\d+/", name)})


def load_whisper_transformers(path: str | Path):
    """(model in float32 eval mode, its WhisperTokenizerFast-free token ids: start, no-timestamps, end)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    path = Path(path)
    tensors = _tensors(path / "model.bin")
    vocab, width = tensors["decoder/embeddings/weight"].shape
    config = WhisperConfig(
        vocab_size=vocab, num_mel_bins=tensors["encoder/conv1/weight"].shape[1], d_model=width,
        encoder_layers=_layer_count(tensors, "encoder"), decoder_layers=_layer_count(tensors, "decoder"),
        encoder_attention_heads=width // 64, decoder_attention_heads=width // 64,
        encoder_ffn_dim=tensors["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=tensors["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=tensors["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=tensors["decoder/position_encodings/encodings"].shape[0])
    state = {}

    def linear(hf: str, ct2: str, bias: bool = True):
        state[f"{hf}.weight"] = tensors[f"{ct2}/weight"]
        if bias:
            state[f"{hf}.bias"] = tensors[f"{ct2}/bias"]

    def norm(hf: str, ct2: str):
        state[f"{hf}.weight"], state[f"{hf}.bias"] = tensors[f"{ct2}/gamma"], tensors[f"{ct2}/beta"]

    def fused(hf: str, ct2: str, names: tuple[str, ...]):
        weights = tensors[f"{ct2}/weight"].chunk(len(names))
        biases = tensors[f"{ct2}/bias"].chunk(len(names))
        for name, weight, bias in zip(names, weights, biases):
            state[f"{hf}.{name}.weight"] = weight
            if name != "k_proj":  # Whisper's key projections have no bias
                state[f"{hf}.{name}.bias"] = bias

    for side in ("encoder", "decoder"):
        norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
        state[f"model.{side}.embed_positions.weight"] = tensors[f"{side}/position_encodings/encodings"]
        for i in range(getattr(config, f"{side}_layers")):
            hf, ct2 = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            fused(f"{hf}.self_attn", f"{ct2}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
            linear(f"{hf}.self_attn.out_proj", f"{ct2}/self_attention/linear_1")
            norm(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")
            linear(f"{hf}.fc1", f"{ct2}/ffn/linear_0")
            linear(f"{hf}.fc2", f"{ct2}/ffn/linear_1")
            norm(f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm")
            if side == "decoder":
                linear(f"{hf}.encoder_attn.q_proj", f"{ct2}/attention/linear_0")
                fused(f"{hf}.encoder_attn", f"{ct2}/attention/linear_1", ("k_proj", "v_proj"))
                linear(f"{hf}.encoder_attn.out_proj", f"{ct2}/attention/linear_2")
                norm(f"{hf}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm")
    linear("model.encoder.conv1", "encoder/conv1")
    linear("model.encoder.conv2", "encoder/conv2")
    state["model.decoder.embed_tokens.weight"] = tensors["decoder/embeddings/weight"]
    state["proj_out.weight"] = tensors["decoder/embeddings/weight"]  # tied, as in Whisper
    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if [m for m in missing if "embed_positions" not in m] or unexpected:
        raise ValueError(f"conversion left out {missing} and did not use {unexpected}")
    tokenizer = json.loads((path / "tokenizer.json").read_text())
    return model.eval(), tokenizer


def special_ids(tokenizer: dict) -> dict[str, int]:
    added = {token["content"]: token["id"] for token in tokenizer["added_tokens"]}
    return {"start": added["<|startoftranscript|>"], "no_timestamps": added["<|notimestamps|>"],
            "end": added["<|endoftext|>"], "en": added.get("<|en|>"), "transcribe": added.get("<|transcribe|>")}


@torch.inference_mode()
def greedy_transcribe(model, tokenizer: dict, samples: np.ndarray, *, multilingual: bool = False) -> str:
    """Greedy decoding of each 30 s window without timestamps: the simplest fair counterpart of faster-whisper
    with beam_size=1 and without_timestamps=True."""
    from tokenizers import Tokenizer
    from transformers import WhisperFeatureExtractor

    ids = special_ids(tokenizer)
    prefix = [ids["start"]] + ([ids["en"], ids["transcribe"]] if multilingual else []) + [ids["no_timestamps"]]
    extractor = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
    decode = Tokenizer.from_str(json.dumps(tokenizer))
    window = 30 * 16000
    texts = []
    for start in range(0, len(samples), window):
        features = extractor(samples[start:start + window], sampling_rate=16000, return_tensors="pt").input_features
        encoded = model.model.encoder(features).last_hidden_state
        tokens, past = list(prefix), None
        step = torch.tensor([prefix])
        for _ in range(model.config.max_target_positions - len(prefix)):
            out = model(encoder_outputs=(encoded,), decoder_input_ids=step, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = int(out.logits[0, -1].argmax())
            if token == ids["end"]:
                break
            tokens.append(token)
            step = torch.tensor([[token]])
        texts.append(decode.decode(tokens[len(prefix):], skip_special_tokens=True))
    return " ".join(t.strip() for t in texts)
