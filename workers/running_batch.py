"""The running batch of one loaded model: its rows, the prompts it is prefilling, and one engine step over both.

A step is one forward pass (workers/packed_step.py): every running row's next token, plus chunks of the
prompts admitted so far, first come first served, up to the step's allowance of prompt tokens
(`AIHUB_MAX_BATCH_TOKENS`; a longer prompt is spread over several steps). A prompt whose last chunk ran
joins the rows at that step, with its first token, one row per choice (`n`) or identical request: it is
computed once. A prompt that starts like the last distinct prompt this model and adapter saw reuses that
prefix's keys and values (the chat template's preamble, a system prompt, a conversation's earlier turns).

A prompt with images (a vision model's, workers/vision.py) is the exception: its image tokens are
placeholders whose embeddings the vision tower computes from pixel inputs, which the packed pass cannot
carry for one prompt among many tokens. It is prefilled whole in a forward of its own (standard attention,
its pixel inputs), after the step's packed pass, and then decodes in the packed steps like any other row
(at its length plus an offset where its images took fewer rotary positions than tokens: Qwen2-VL's M-RoPE).
Its placeholder ids stand for different pictures in different requests, so it neither reuses a remembered
prefix nor becomes one, and only the choices of its own request share it.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from apps.core.errors import error_object

from .engine import LoadedModel
from .kv_cache import GROWTH, RowCache, kv_bytes_per_token
from .packed_step import PACKED_ATTENTION, Chunk, PackedStep, use_packed_attention
from .sampling import choose_tokens
from .sequence import Sequence
from .vision import rope_positions

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch

# A prompt prefix is reused when at least this many tokens are shared (below, computing them costs about as
# much as the copy), and at most this many are remembered per model and adapter.
MIN_SHARED_PREFIX = 16
MAX_REMEMBERED_PREFIX = 2048


@dataclass
class _Prefix:
    token_ids: list[int]
    states: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values [1, kv heads, tokens, head size]


class Prompt:
    """A prompt being prefilled, the sequences that will start from it, and its keys and values so far."""

    def __init__(self, sequence: Sequence, layers: int):
        self.sequences = [sequence]
        self.token_ids = sequence.prompt_ids
        self.adapter = sequence.adapter
        self.done = 0  # tokens whose keys and values are computed (or reused)
        self.reused = 0
        self.keys: list[torch.Tensor | None] = [None] * layers
        self.values: list[torch.Tensor | None] = [None] * layers
        self.pixels = pixel_inputs(sequence)

    def same_as(self, sequence: Sequence) -> bool:
        if self.pixels is not None or pixel_inputs(sequence) is not None:
            return sequence.request_id == self.sequences[0].request_id  # its own choices (`n`) only
        return sequence.adapter == self.adapter and sequence.prompt_ids == self.token_ids

    @property
    def live(self) -> list[Sequence]:
        return [sequence for sequence in self.sequences if not sequence.finished]


@dataclass
class _Plan:
    """A step's input, one entry per token: the running rows' last tokens first, then prompt chunks."""
    ids: list[int]
    positions: list[int]  # each token's position in its own sequence (offset after an M-RoPE image)
    adapters: list[str | None]
    keep: list[int]  # the tokens whose logits are sampled: every row's, and each finished prompt's last


@dataclass
class StepCounts:
    rows: int  # running rows that decoded a token
    prompt_tokens: int  # prompt tokens computed
    prompts_done: int  # prompts whose prefill ended (their rows joined)


class RunningBatch:
    """The rows of one loaded model that are generating, with their KV cache (workers/kv_cache.py), and the
    prompts admitted to join them."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.rows: list[Sequence] = []
        self.prefilling: list[Prompt] = []
        config = loaded.model.config
        self.layers = (getattr(config, "text_config", None) or config).num_hidden_layers
        self.cache = RowCache(self.layers)
        self.bytes_per_token = kv_bytes_per_token(loaded.model)
        self._uncommitted: list[Prompt] | None = None  # the prompts of a step whose forward has not finished

    @property
    def admitted(self) -> list[Sequence]:
        """Every sequence holding a row: running, or waiting for its prompt's prefill to end."""
        return self.rows + [sequence for prompt in self.prefilling for sequence in prompt.live]

    def cache_bytes(self) -> int:
        return (self.cache.allocated_tokens() + sum(prompt.done for prompt in self.prefilling)) * self.bytes_per_token

    def worst_case_bytes(self, extra: list[Sequence] = ()) -> int:
        """The cache if every admitted row (and `extra`, about to be) ran to its max_tokens before any left."""
        sequences = self.admitted + list(extra)
        if not sequences:
            return 0
        width = max([self.cache.width] + [len(s.prompt_ids) for s in sequences])
        slots = max(self.cache.slots, len(sequences))
        # Up to 2 × GROWTH columns may be allocated beyond the widest row (workers/kv_cache.py).
        return slots * (width + max(s.remaining for s in sequences) + 2 * GROWTH) * self.bytes_per_token

    def admit(self, sequence: Sequence) -> int:
        """Queue the sequence's prompt for prefilling (joining an identical one); returns prompt tokens reused."""
        for prompt in self.prefilling:
            if prompt.same_as(sequence):
                prompt.sequences.append(sequence)
                return prompt.reused
        prompt = Prompt(sequence, self.layers)
        prefix = self.loaded.prefixes.get(sequence.adapter) if prompt.pixels is None else None
        if prefix is not None:
            # At least the last prompt token is computed: its logits give the first new token.
            shared = min(_common_length(prefix.token_ids, prompt.token_ids), len(prompt.token_ids) - 1)
            if shared >= MIN_SHARED_PREFIX:
                prompt.keys = [keys[:, :, :shared] for keys, _ in prefix.states]
                prompt.values = [values[:, :, :shared] for _, values in prefix.states]
                prompt.done = prompt.reused = shared
        self.prefilling.append(prompt)
        return prompt.reused

    # -- the step ----------------------------------------------------------------

    def step(self, prompt_allowance: int) -> StepCounts:
        """One forward pass: a token for every row, and up to `prompt_allowance` prompt tokens; then at most one
        prompt with images, prefilled on its own (see the module's docstring)."""
        # Under the model's lock: attaching an adapter (which may wrap the model in peft) waits for the step.
        with self.loaded.lock, torch.inference_mode():
            self._end_removed_adapters()
            counts = self._packed_step(prompt_allowance)
            pictured = next((prompt for prompt in self.prefilling if prompt.pixels is not None), None)
            if pictured is not None:
                self._prefill_pictured(pictured)
                counts = StepCounts(counts.rows, counts.prompt_tokens + len(pictured.token_ids),
                                    counts.prompts_done + 1)
            return counts

    def _packed_step(self, prompt_allowance: int) -> StepCounts:
        rows = list(self.rows)
        # A row's next position is its length, plus its offset where the model's positions are not token
        # indices (M-RoPE after an image: workers/vision.py).
        positions = [length + sequence.position_offset for sequence, length in zip(rows, self.cache.lengths)]
        plan = _Plan([sequence.generated[-1] for sequence in rows], positions,
                     [sequence.adapter for sequence in rows], list(range(len(rows))))
        prompts, chunks = self._plan_prompts(plan, prompt_allowance)
        if not plan.ids:
            return StepCounts(0, 0, 0)
        if rows:
            self.cache.reserve_column()
        self._uncommitted = prompts
        logits = self._forward(plan, PackedStep(self.cache, len(rows), chunks))
        if rows:
            self.cache.commit_column()
        self._uncommitted = None
        joined = self._commit_prompts(prompts, chunks)
        # One logits row per running row and per finished prompt; a prompt's copies get a row each.
        source = list(range(len(rows))) + [len(rows) + index for index, (_, copies) in enumerate(joined)
                                           for _ in copies]
        if source != list(range(logits.shape[0])):
            logits = logits[torch.tensor(source, dtype=torch.long, device=self.loaded.device)]
        new_rows = [sequence for _, copies in joined for sequence in copies]
        self.rows += new_rows
        sampled = rows + new_rows
        if sampled:  # none when the step only computed part of a long prompt
            tokens, logprobs = choose_tokens(logits, sampled)
            for sequence, token, logprob in zip(sampled, tokens, logprobs):
                sequence.accept(token, logprob)
        return StepCounts(len(rows), len(plan.ids) - len(rows), len(joined))

    def _plan_prompts(self, plan: _Plan, allowance: int) -> tuple[list[Prompt], list[Chunk]]:
        """Add the next chunks of the prompts being prefilled to the step, first come first served, up to
        `allowance` tokens; a prompt whose chunk ends it has its last token's logits kept."""
        prompts, chunks = [], []
        for prompt in self.prefilling:
            if allowance <= 0:
                break
            if prompt.pixels is not None:
                continue  # prefilled on its own after the packed pass
            end = min(len(prompt.token_ids), prompt.done + allowance)
            chunks.append(Chunk(len(plan.ids), prompt.done, end, list(prompt.keys), list(prompt.values)))
            prompts.append(prompt)
            plan.ids += prompt.token_ids[prompt.done:end]
            plan.positions += range(prompt.done, end)
            plan.adapters += [prompt.adapter] * (end - prompt.done)
            if end == len(prompt.token_ids):
                plan.keep.append(len(plan.ids) - 1)
            allowance -= end - prompt.done
        return prompts, chunks

    def abandon_step(self) -> list[Sequence]:
        """After a step that raised: the sequences it ends. A forward that failed with prompt chunks in it ends
        only those prompts' requests (the running rows' cache is unchanged until the forward completes, so
        they go on); any other failure ends the whole batch, whose cache is then in doubt."""
        if self._uncommitted:
            ended = [sequence for prompt in self._uncommitted for sequence in prompt.sequences]
            self.prefilling = [prompt for prompt in self.prefilling if prompt not in self._uncommitted]
            self._uncommitted = None
            return ended
        ended = self.admitted
        self.clear()
        return ended

    def retire(self) -> None:
        """Drop finished rows and prompts every request of which ended (a cancel, the time limit)."""
        self.prefilling = [prompt for prompt in self.prefilling if prompt.live]
        keep = [index for index, sequence in enumerate(self.rows) if not sequence.finished]
        if len(keep) == len(self.rows):
            return
        with torch.inference_mode():  # the cache's buffers are inference tensors, moved in place
            order = self.cache.remove(keep)
        self.rows = [self.rows[index] for index in order]

    def clear(self) -> None:
        self.rows, self.prefilling, self._uncommitted = [], [], None
        self.cache.clear()

    # -- internals -------------------------------------------------------------------

    def _forward(self, plan: _Plan, step: PackedStep) -> torch.Tensor:
        """Logits [len(plan.keep), vocab] of the step's input tokens `plan.keep`, from one packed forward pass."""
        device = self.loaded.device
        model = self.loaded.model
        use_packed_attention(model)
        inputs = {"input_ids": torch.tensor(plan.ids, device=device).unsqueeze(1),
                  "position_ids": torch.tensor(plan.positions, device=device).unsqueeze(1),
                  "packed_step": step, "use_cache": False}
        if self.loaded.adapters:
            inputs["adapter_names"] = [adapter or BASE_ADAPTER for adapter in plan.adapters]
        # The output layer (a vocabulary-wide matmul) runs only for the tokens whose next token is drawn.
        selected = torch.tensor(plan.keep, dtype=torch.long, device=device)
        hook = model.get_output_embeddings().register_forward_pre_hook(
            lambda module, args: (args[0].index_select(0, selected), *args[1:]))
        try:
            return model(**inputs).logits[:, -1, :]
        finally:
            hook.remove()

    def _prefill_pictured(self, prompt: Prompt) -> None:
        """Compute a prompt with images whole, in a standard forward with its pixel inputs; its sequences join
        the rows with their first token."""
        model, device = self.loaded.model, self.loaded.device
        ids = torch.tensor([prompt.token_ids], device=device)
        mask = torch.ones_like(ids)
        inputs = dict(prompt.pixels)
        rope = rope_positions(model, ids, mask, inputs)
        offset = 0
        if rope is not None:  # Qwen2-VL: 3-D positions for the prompt, and the offset of the text after it
            inputs["position_ids"], offset = rope
        self._uncommitted = [prompt]  # a failure ends this prompt's requests only
        with _standard_attention(model):
            output = model(input_ids=ids, attention_mask=mask, past_key_values=DynamicCache(), use_cache=True,
                           logits_to_keep=1, **inputs)
        self._uncommitted = None
        self.prefilling.remove(prompt)
        live = prompt.live
        if not live:
            return
        self.cache.add([([(layer.keys, layer.values) for layer in output.past_key_values.layers], len(live))])
        for sequence in live:
            sequence.position_offset = offset
        self.rows += live
        tokens, logprobs = choose_tokens(output.logits[:, -1, :].expand(len(live), -1), live)
        for sequence, token, logprob in zip(live, tokens, logprobs):
            sequence.accept(token, logprob)

    def _commit_prompts(self, prompts: list[Prompt], chunks: list[Chunk]) -> list[tuple[Prompt, list[Sequence]]]:
        """Keep each prompt's new keys and values; the prompts now complete join the rows (one copy per live
        sequence). Returns them with their sequences, in the order their logits come."""
        joined = []
        for prompt, chunk in zip(prompts, chunks):
            prompt.keys, prompt.values, prompt.done = chunk.keys, chunk.values, chunk.end
            if prompt.done < len(prompt.token_ids):
                continue
            self.prefilling.remove(prompt)
            if not prompt.reused:
                self._remember_prefix(prompt)
            joined.append((prompt, prompt.live))
        self.cache.add([(list(zip(prompt.keys, prompt.values)), len(live)) for prompt, live in joined if live])
        return joined

    def _remember_prefix(self, prompt: Prompt) -> None:
        """Keep the prompt and its keys and values: the next prompts that start like it reuse their common
        part instead of computing it again."""
        length = min(len(prompt.token_ids), MAX_REMEMBERED_PREFIX)
        states = [(keys[:, :, :length].clone(), values[:, :, :length].clone())
                  for keys, values in zip(prompt.keys, prompt.values)]
        self.loaded.prefixes[prompt.adapter] = _Prefix(prompt.token_ids[:length], states)

    def _end_removed_adapters(self) -> None:
        """Rows and prompts of a fine-tuned model deleted while they ran end; the rest of the batch goes on."""
        gone = [sequence for sequence in self.admitted
                if sequence.adapter and sequence.adapter not in self.loaded.adapters]
        for sequence in gone:
            sequence.fail(error_object(f"The model '{sequence.adapter}' was removed.", type="invalid_request_error",
                                       param="model", code="model_not_found"))
        if gone:
            self.retire()


def pixel_inputs(sequence: Sequence) -> dict | None:
    """The pixel inputs a vision prompt's prefill takes (workers/vision.py); None for a text prompt."""
    vision = getattr(sequence, "vision", None)
    return vision.inputs if vision is not None and vision.inputs else None


@contextmanager
def _standard_attention(model):
    """The model's language layers on SDPA for one forward (a prompt with images), packed again after it."""
    config = getattr(model, "get_base_model", lambda: model)().config
    configs = [each for each in (config, getattr(config, "text_config", None)) if each is not None]
    for each in configs:
        each._attn_implementation = "sdpa"
    try:
        yield
    finally:
        for each in configs:
            each._attn_implementation = PACKED_ATTENTION


def _common_length(first: list[int], second: list[int]) -> int:
    length = 0
    for a, b in zip(first, second):
        if a != b:
            break
        length += 1
    return length
