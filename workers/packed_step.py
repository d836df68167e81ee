"""One forward pass for a whole engine step: every running row's next token and chunks of new prompts, packed.

A step's tokens go through the model as a batch of one-token rows (input [tokens, 1]): the decoding rows'
last tokens first, then the prompt chunks' tokens one after another. The linear layers (most of the work)
see exactly the tokens there are, with no padding; peft's mixed-adapter forward (`adapter_names`, one per
batch row) applies each token's adapter; and the model's weights are read from memory once per step
instead of once per step plus once per prefill (on this machine a forward costs about 45 ms before its
first token: reading 540 MB of float32 weights; docs/models.md has the numbers).

Only attention has to know which token belongs to which sequence. The engine registers `packed_attention`
with transformers' attention interface and switches its models to it (`use_packed_attention`); each forward
passes its `PackedStep` as a keyword argument, which transformers hands down to every attention call:
- the decoding rows' queries [rows, heads, 1, head size] attend to their own rows of the batch's cache
  (workers/kv_cache.py: the step's column is written in place, masked by each row's length), one SDPA call;
- each prompt chunk's queries attend causally to that prompt's keys so far (a remembered prefix, earlier
  chunks) and its own, one SDPA call per chunk.
Position ids carry each token's position in its own sequence (plus the row's offset after an M-RoPE
image prompt: workers/vision.py), so rotary embeddings are as if each sequence ran alone. Attention masks
built by transformers are skipped (a custom implementation without a mask function gets none).

Supported: plain causal attention with any number of KV heads (GQA) and sliding windows. A model whose
attention needs something else (logit soft-capping, attention sinks) is refused with a clear error at its
first step rather than answered wrongly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from .kv_cache import RowCache

PACKED_ATTENTION = "aihub_packed"


@dataclass
class Chunk:
    """Tokens `start`..`end` of one prompt computed in this step; `keys`/`values` per layer hold the prompt's
    keys and values before the chunk ([1, kv heads, start, head size]; empty lists when it starts at 0) and,
    once the forward has run, through its end."""
    offset: int  # where its tokens sit in the step's input
    start: int
    end: int
    keys: list[torch.Tensor | None]
    values: list[torch.Tensor | None]
    masks: dict = field(default_factory=dict)  # by sliding window: [tokens, start + tokens] bool

    @property
    def tokens(self) -> int:
        return self.end - self.start

    def mask(self, window: int | None, device) -> torch.Tensor:
        if window not in self.masks:
            query = torch.arange(self.start, self.end, device=device).unsqueeze(1)
            key = torch.arange(self.end, device=device).unsqueeze(0)
            allowed = key <= query
            if window:
                allowed &= key > query - window
            self.masks[window] = allowed
        return self.masks[window]


@dataclass
class PackedStep:
    cache: RowCache
    decode_rows: int  # the first `decode_rows` tokens of the input are the running rows', in row order
    chunks: list[Chunk]
    _row_masks: dict = field(default_factory=dict)

    def attend(self, layer: int, query, key, value, scaling: float | None, window: int | None):
        """Attention output [tokens, 1, heads, head size] of one layer, for query/key/value
        [tokens, heads or kv heads, 1, head size] (rotary already applied)."""
        output = torch.empty_like(query)
        gqa = query.shape[1] != key.shape[1]
        rows = self.decode_rows
        if rows:
            keys, values = self.cache.write_column(layer, key[:rows], value[:rows])
            output[:rows] = F.scaled_dot_product_attention(
                query[:rows], keys, values, attn_mask=self._row_mask(window), scale=scaling, enable_gqa=gqa)
        for chunk in self.chunks:
            span = slice(chunk.offset, chunk.offset + chunk.tokens)
            keys, values = key[span].transpose(0, 2), value[span].transpose(0, 2)  # [1, kv heads, tokens, size]
            if chunk.keys[layer] is not None:
                keys = torch.cat([chunk.keys[layer], keys], dim=2)
                values = torch.cat([chunk.values[layer], values], dim=2)
            chunk.keys[layer], chunk.values[layer] = keys, values
            attended = F.scaled_dot_product_attention(
                query[span].transpose(0, 2), keys, values, attn_mask=chunk.mask(window, query.device),
                scale=scaling, enable_gqa=gqa)
            output[span] = attended.transpose(0, 2)
        return output.transpose(1, 2)

    def _row_mask(self, window: int | None) -> torch.Tensor:
        if window not in self._row_masks:
            mask = self.cache.column_mask()
            if window:
                mask = mask.clone()
                mask[..., :max(0, mask.shape[-1] - window)] = False  # the query is the last column
            self._row_masks[window] = mask
        return self._row_masks[window]


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     packed_step: PackedStep | None = None, sliding_window: int | None = None, softcap=None,
                     s_aux=None, **kwargs):
    """transformers' attention interface: (module, query, key, value, mask, ...) -> (output, weights)."""
    if packed_step is None:
        raise RuntimeError("this model's forward passes belong to the batching engine (workers/packed_step.py)")
    if softcap is not None or s_aux is not None:
        raise NotImplementedError(f"{type(module).__name__} needs attention soft-capping or sinks, which the "
                                  "batching engine's packed attention does not implement")
    return packed_step.attend(module.layer_idx, query, key, value, scaling, sliding_window), None


AttentionInterface.register(PACKED_ATTENTION, packed_attention)


def use_packed_attention(model) -> None:
    """Route the model's attention layers to `packed_attention` (the engine's forwards are all packed)."""
    config = getattr(model, "get_base_model", lambda: model)().config
    for each in (config, getattr(config, "text_config", None)):
        if each is not None and each._attn_implementation != PACKED_ATTENTION:
            each._attn_implementation = PACKED_ATTENTION
