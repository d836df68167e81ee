"""Continuous batching: one loop per worker process runs every generation of that process (docs/models.md).

Celery's task threads each hand one request (a `Sequence`) to the engine and wait
on its outbox; one engine thread owns the forward passes. Between two decoding
steps (token boundaries) it
- prepares newly submitted requests (chat template, or a raw prompt's plain tokens; context check) in
  arrival order,
- drops the ones cancelled while they waited,
- admits waiting requests, first come first served, while the batch has rows free
  (`AIHUB_MAX_BATCH_SIZE`), the prompts fit the step's token allowance
  (`AIHUB_MAX_BATCH_TOKENS`) and the batch's KV cache at its worst case (every row
  running to its max_tokens) fits the memory the models leave in the budget; a
  request that does not fit waits for rows to finish, it does not fail,
- prefills the admitted prompts together and merges their cache into the running
  batch (left-padded, so every row ends at the same column), reusing the cache
  of a prompt prefix it has seen (a system prompt, the earlier turns),
- runs one decoding step for every row, each with its own logits steps and sampling settings
  (workers/sampling.py: logit_bias, penalties, a grammar mask, logprobs, the choice), and
- retires the rows that finished (eos, max_tokens, a stop string, a cancel, the
  time limit), so their slot and cache are free for the next step.

Each loaded model has its own running batch; the loop steps them in turn, so
requests for two models interleave. Fine-tuned adapters of one base share the
base's batch: peft applies each row's adapter (`adapter_names`), and a base row
runs without any.

The engine does no I/O: text goes to each request's outbox, and its task thread
writes events, checks for cancels and stores the answer (workers/generation.py).
"""
from __future__ import annotations

import functools
import inspect
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from apps.core.errors import error_object

from .constraints import ConstraintError, Matcher, matcher_for
from .engine import LoadedModel
from .logprobs import token_text
from .sampling import choose_tokens, seeded_generator
from .text_stream import TextStream
from .tool_prompt import prompt_ids
from .vision import rope_positions

logger = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch

# What a Sequence's outbox carries: (TEXT, index, (text, logprob entries or None)), (DONE, index, result),
# (FAILED, index, error); `index` is the choice (n > 1 puts a request's choices in one outbox).
TEXT, DONE, FAILED = "text", "done", "failed"


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop | length | cancelled


class Sequence:
    """One choice of a request inside the engine (a request with `n` > 1 is n of them, `index` 0..n-1, sharing
    one outbox). Built by the task thread, then touched only by the engine thread, except `cancel()` and the
    `outbox`, which are the two ways between them."""

    def __init__(self, *, request_id: str, messages: list[dict], params: dict, adapter: str | None = None,
                 time_limit: float | None = None, index: int = 0, outbox: queue.SimpleQueue | None = None):
        self.request_id = request_id
        self.messages = messages
        self.adapter = adapter
        self.index = index
        self.max_tokens: int = params["max_tokens"]
        self.temperature: float = params.get("temperature", 1.0)
        self.top_p: float = params.get("top_p", 1.0)
        self.seed: int | None = params.get("seed")
        self.stop: list[str] = params.get("stop") or []
        self.ignore_eos: bool = bool(params.get("ignore_eos"))
        # Raw-prompt mode (legacy /completions): a text or token ids the model continues as they are, without
        # the chat template; `messages` is then unused.
        self.prompt: str | list[int] | None = params.get("prompt")
        self.logprobs: bool = bool(params.get("logprobs"))
        self.top_logprobs: int = params.get("top_logprobs") or 0
        self.presence_penalty: float = params.get("presence_penalty") or 0.0
        self.frequency_penalty: float = params.get("frequency_penalty") or 0.0
        self.logit_bias: dict[int, float] = {int(token): value
                                             for token, value in (params.get("logit_bias") or {}).items()}
        self.constraint: dict | None = params.get("constraint")  # workers/constraints.py
        self.matcher: Matcher | None = None  # set by submit() when constrained
        # Function calling (workers/tool_prompt.py): the functions offered, OpenAI's tool_choice, parallel calls.
        self.tools: list[dict] = params.get("tools") or []
        self.tool_choice = params.get("tool_choice") or "auto"
        self.parallel_tool_calls: bool = params.get("parallel_tool_calls", True)
        # A vision model's prompt, made by the task thread (workers/vision.py): its token ids (image tokens
        # included) and the pixel inputs its prefill takes; None for a text model.
        self.vision = None
        self.deadline = time.monotonic() + time_limit if time_limit else None
        self.outbox: queue.SimpleQueue = outbox if outbox is not None else queue.SimpleQueue()
        self._cancelled = threading.Event()
        # Set by the engine when it prepares the request.
        self.prompt_ids: list[int] = []
        self.generated: list[int] = []
        self.generator = None
        self.text_stream: TextStream | None = None
        self.eos_ids: set[int] = set()
        self.finished = False
        self.token_text = None  # workers/logprobs.TokenText, for a row that asks for logprobs
        self.bias_tokens: torch.Tensor | None = None  # logit_bias on the device: token ids and their values
        self.bias_values: torch.Tensor | None = None
        self.token_counts: torch.Tensor | None = None  # generated tokens counted per id, for the penalties
        self.counted = 0  # how many of `generated` token_counts holds
        self._logprobs: list[dict] = []  # entries of tokens whose text has not been emitted yet

    def cancel(self) -> None:
        """From any thread: the engine drops the request before its next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def remaining(self) -> int:
        return self.max_tokens - len(self.generated)

    # -- engine thread only ----------------------------------------------------

    def accept(self, token: int, logprob: dict | None = None) -> None:
        if self.finished:
            return
        self.generated.append(token)
        if self.matcher is not None and not self.matcher.accept(token):
            # The mask allows only the grammar's tokens, so this is a bug, not a request error.
            logger.error("request %s left its grammar: %s", self.request_id, self.matcher.error)
            self.fail(error_object("The answer left its response_format grammar; see the worker log.",
                                   type="server_error", code="generation_failed"))
            return
        # A constrained row draws end-of-sequence only where its grammar may end (the mask forbids it before).
        if token in self.eos_ids and not self.ignore_eos:
            self.finish("stop")  # the end-of-turn token is not part of the answer, nor of its logprobs
            return
        if logprob is not None:
            self._logprobs.append(logprob)
        self.text_stream.add([token])
        if self.text_stream.stopped or (self.matcher is not None and self.matcher.complete):
            self.finish("stop")
        elif self.remaining <= 0:
            self.finish("length")

    def finish(self, finish_reason: str) -> None:
        if self.finished:
            return
        self.finished = True
        text = self.text_stream.finish() if self.text_stream else ""
        if self._logprobs and not self.text_stream.stopped:
            self.emit("")  # tokens with no text of their own (special tokens) still have their logprobs
        self.outbox.put((DONE, self.index,
                         GenerationResult(text, len(self.prompt_ids), len(self.generated), finish_reason)))

    def fail(self, error: dict) -> None:
        if not self.finished:
            self.finished = True
            self.outbox.put((FAILED, self.index, error))

    def emit(self, text: str) -> None:
        """New settled text, with the logprobs of the tokens that made it (the text a stop string cut off still
        had tokens: their entries come with the text before it)."""
        entries, self._logprobs = (self._logprobs, []) if self.logprobs else (None, self._logprobs)
        self.outbox.put((TEXT, self.index, (text, entries)))


class RunningBatch:
    """The rows of one loaded model that are generating, and their KV cache (left-padded to one width)."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.rows: list[Sequence] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [rows, width]: 1 for a real token, 0 for padding
        self.last: torch.Tensor | None = None  # [rows, 1]: the token each row feeds next
        self.positions: torch.Tensor | None = None  # [rows, 1]: that token's position in its own sequence
        self.bytes_per_token = kv_bytes_per_token(loaded.model)
        forward = getattr(loaded.model, "get_base_model", lambda: loaded.model)().forward
        self._keeps_last_logits = "logits_to_keep" in inspect.signature(forward).parameters

    @property
    def width(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]

    def cache_bytes(self) -> int:
        return len(self.rows) * self.width * self.bytes_per_token

    def worst_case_bytes(self, extra: list[Sequence] = ()) -> int:
        """The cache if every row (and `extra`, admitted now) ran to its max_tokens before any left."""
        rows = self.rows + list(extra)
        if not rows:
            return 0
        width = max([self.width] + [len(s.prompt_ids) for s in extra])
        # The cache's buffers may hold up to GROWTH columns more than are used.
        return len(rows) * (width + max(s.remaining for s in rows) + _GrowingLayer.GROWTH) * self.bytes_per_token

    # -- the two kinds of step -------------------------------------------------

    def prefill(self, group: list[Sequence]) -> int:
        """Compute the prompts' cache and first tokens, and add the rows; returns the prompt tokens reused.

        The choices of one request (`n` > 1) have the same prompt: each distinct prompt is computed once
        and its row of the cache copied for the others. A prompt with images is prefilled on its own, with its
        pixel inputs (their shapes differ per request), and then decodes in the batch like any other row.
        """
        plain = [sequence for sequence in group if not (sequence.vision and sequence.vision.inputs)]
        reused = self._prefill(plain) if plain else 0
        pictured: dict[str, list[Sequence]] = {}
        for sequence in group:
            if sequence.vision and sequence.vision.inputs:
                pictured.setdefault(sequence.request_id, []).append(sequence)
        for request in pictured.values():
            self._prefill(request, vision=request[0].vision.inputs)
        return reused

    def _prefill(self, group: list[Sequence], vision: dict | None = None) -> int:
        device = self.loaded.device
        distinct, source = _distinct_prompts(group)
        # Image tokens are placeholders: the same ids stand for different pictures, so a prompt with images
        # neither reuses a remembered prefix nor becomes one.
        prefix, reused = self._shared_prefix(distinct) if vision is None else (None, 0)
        suffixes = [sequence.prompt_ids[reused:] for sequence in distinct]
        width = max(len(suffix) for suffix in suffixes)
        ids = torch.zeros((len(distinct), width), dtype=torch.long)
        mask = torch.zeros((len(distinct), reused + width), dtype=torch.long)
        mask[:, :reused] = 1
        for index, suffix in enumerate(suffixes):
            ids[index, width - len(suffix):] = torch.tensor(suffix)
            mask[index, reused + width - len(suffix):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, reused:]
        cache = _new_cache()
        if prefix is not None:
            # Every row starts from the same prefix: [shared prefix | padding | its own suffix].
            for index, (keys, values) in enumerate(prefix.states):
                cache.update(keys[:, :, :reused].expand(len(distinct), -1, -1, -1).contiguous(),
                             values[:, :, :reused].expand(len(distinct), -1, -1, -1).contiguous(), index)
        extra = {}
        if vision is not None:
            extra = dict(vision)
            rope = rope_positions(self.loaded.model, ids, mask, vision)
            if rope is not None:  # Qwen2-VL: 3-D positions for the prefill, the text position after it
                extra["position_ids"], positions = rope, rope[0]
        logits = self._forward(distinct, **{"input_ids": ids, "attention_mask": mask, "position_ids": positions,
                                            "past_key_values": cache, **extra})
        if prefix is None and vision is None:
            self._remember_prefix(distinct[0], cache)
        if len(distinct) < len(group):
            rows = torch.tensor(source, device=device)
            cache.batch_select_indices(rows)
            logits, mask, positions = logits[rows], mask[rows], positions[rows]
        tokens, logprobs = choose_tokens(logits, group)
        self._merge(group, cache, mask, tokens, positions[:, -1:] + 1)
        for sequence, token, logprob in zip(group, tokens, logprobs):
            sequence.accept(token, logprob)
        return reused

    def decode(self) -> None:
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)
        logits = self._forward(self.rows, input_ids=self.last, attention_mask=self.mask,
                               position_ids=self.positions, past_key_values=self.cache)
        tokens, logprobs = choose_tokens(logits, self.rows)
        self.last = torch.tensor(tokens, device=self.loaded.device).unsqueeze(1)
        self.positions = self.positions + 1
        for sequence, token, logprob in zip(self.rows, tokens, logprobs):
            sequence.accept(token, logprob)

    def retire(self) -> None:
        """Drop finished rows from the batch and the cache, and the padding columns no row needs any more."""
        keep = [index for index, sequence in enumerate(self.rows) if not sequence.finished]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.clear()
            return
        self.rows = [self.rows[index] for index in keep]
        selected = torch.tensor(keep, device=self.loaded.device)
        self.cache.batch_select_indices(selected)
        self.mask, self.last, self.positions = self.mask[selected], self.last[selected], self.positions[selected]
        first_used = int(self.mask.any(dim=0).nonzero()[0])
        if first_used:
            for layer in self.cache.layers:
                layer.set(layer.keys[:, :, first_used:], layer.values[:, :, first_used:])
            self.mask = self.mask[:, first_used:]

    def clear(self) -> None:
        self.rows, self.cache, self.mask, self.last, self.positions = [], None, None, None, None

    # -- internals ---------------------------------------------------------------

    def _forward(self, rows: list[Sequence], **inputs) -> torch.Tensor:
        """Last-position logits [rows, vocab] of one forward pass."""
        if self._keeps_last_logits:
            inputs["logits_to_keep"] = 1
        # Under the model's lock: attaching an adapter (which may wrap the model in peft) waits for the step.
        with self.loaded.lock, torch.inference_mode():
            names = []
            for sequence in rows:
                if sequence.adapter and sequence.adapter not in self.loaded.adapters:
                    # Its fine-tuned model was deleted while it ran: the row ends, the rest of the batch goes on
                    # (its output for this step is ignored, as it has finished).
                    sequence.fail(error_object(f"The model '{sequence.adapter}' was removed.",
                                               type="invalid_request_error", param="model",
                                               code="model_not_found"))
                    names.append(BASE_ADAPTER)
                else:
                    names.append(sequence.adapter or BASE_ADAPTER)
            if self.loaded.adapters:
                inputs["adapter_names"] = names
            return self.loaded.model(**inputs, use_cache=True).logits[:, -1, :]

    def _shared_prefix(self, group: list[Sequence]) -> tuple[_Prefix | None, int]:
        """The remembered prefix every prompt of `group` starts with, and how many of its tokens they share.

        Each row must keep at least its last prompt token to compute (its logits give the first new token).
        Keys and values depend on the adapter, so a prefix serves only rows of the adapter it was made with.
        """
        adapters = {sequence.adapter for sequence in group}
        prefix = self.loaded.prefixes.get(next(iter(adapters))) if len(adapters) == 1 else None
        if prefix is None:
            return None, 0
        shared = min(min(_common_length(prefix.token_ids, s.prompt_ids), len(s.prompt_ids) - 1) for s in group)
        return (prefix, shared) if shared >= MIN_SHARED_PREFIX else (None, 0)

    def _remember_prefix(self, sequence: Sequence, cache: DynamicCache) -> None:
        """Keep the first row's prompt and its keys and values (its real columns are the last ones): the next
        prompts that start like it (the same system prompt, the chat template's preamble, the earlier turns of
        a conversation) reuse their common part instead of computing it again."""
        length = min(len(sequence.prompt_ids), MAX_REMEMBERED_PREFIX)
        start = cache.layers[0].keys.shape[2] - len(sequence.prompt_ids)
        states = [(layer.keys[:1, :, start:start + length].clone(), layer.values[:1, :, start:start + length].clone())
                  for layer in cache.layers]
        self.loaded.prefixes[sequence.adapter] = _Prefix(sequence.prompt_ids[:length], states)

    def _merge(self, group, cache: DynamicCache, mask, tokens: list[int], positions) -> None:
        """Add prefilled rows to the batch. Everything is built before anything is assigned, so a failure
        here (out of memory in a cat) leaves the running rows as they were."""
        last = torch.tensor(tokens, device=self.loaded.device).unsqueeze(1)
        if not self.rows:
            self.rows, self.cache, self.mask, self.last, self.positions = list(group), cache, mask, last, positions
            return
        width = max(self.width, mask.shape[1])
        merged = [(torch.cat([_pad_left(running.keys, width), _pad_left(new.keys, width)]),
                   torch.cat([_pad_left(running.values, width), _pad_left(new.values, width)]))
                  for running, new in zip(self.cache.layers, cache.layers)]
        merged_mask = torch.cat([_pad_left(self.mask, width), _pad_left(mask, width)])
        merged_last, merged_positions = torch.cat([self.last, last]), torch.cat([self.positions, positions])
        for layer, (keys, values) in zip(self.cache.layers, merged):
            layer.set(keys, values)
        self.mask, self.last, self.positions = merged_mask, merged_last, merged_positions
        self.rows += group


class _GrowingLayer(DynamicLayer):
    """A cache layer whose keys and values are views into buffers with room for more columns.

    transformers' DynamicLayer concatenates at every step, copying the whole cache each time (about 8% of a
    16-row decoding step here); this one writes the new column in place and copies only when it grows by
    another GROWTH columns, or when the batch changes shape (`set`).
    """

    GROWTH = 64

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.set(key_states, value_states)
            return self.keys, self.values
        length, needed = self.keys.shape[2], self.keys.shape[2] + key_states.shape[2]
        if needed > self._key_room.shape[2]:
            self._key_room = self._grown(self.keys, needed)
            self._value_room = self._grown(self.values, needed)
        self._key_room[:, :, length:needed] = key_states
        self._value_room[:, :, length:needed] = value_states
        self.keys, self.values = self._key_room[:, :, :needed], self._value_room[:, :, :needed]
        return self.keys, self.values

    def set(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """New contents (rows merged, selected or trimmed); the room grows again at the next update."""
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self.keys, self.values, self._key_room, self._value_room = keys, values, keys, values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.set(self.keys[indices], self.values[indices])

    def _grown(self, states: torch.Tensor, needed: int) -> torch.Tensor:
        room = states.new_empty((*states.shape[:2], needed + self.GROWTH, states.shape[3]))
        room[:, :, :states.shape[2]] = states
        return room


def _new_cache() -> DynamicCache:
    cache = DynamicCache()
    cache.layer_class_to_replicate = _GrowingLayer
    return cache


# A prompt prefix is reused when at least this many tokens are shared (below, a separate prefill costs about
# as much as the copy), and at most this many are remembered per model and adapter.
MIN_SHARED_PREFIX = 16
MAX_REMEMBERED_PREFIX = 2048


@dataclass
class _Prefix:
    token_ids: list[int]
    states: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values [1, kv heads, tokens, head size]


def _distinct_prompts(group: list[Sequence]) -> tuple[list[Sequence], list[int]]:
    """The first row of each distinct (adapter, prompt) in `group`, and for every row the index of its own."""
    distinct, source, seen = [], [], {}
    for sequence in group:
        key = (sequence.adapter, tuple(sequence.prompt_ids))
        if key not in seen:
            seen[key] = len(distinct)
            distinct.append(sequence)
        source.append(seen[key])
    return distinct, source


def _common_length(first: list[int], second: list[int]) -> int:
    length = 0
    for a, b in zip(first, second):
        if a != b:
            break
        length += 1
    return length


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zeros before the sequence axis (the last of a mask, the one before last of keys and values)."""
    if tensor.dim() == 2:
        return F.pad(tensor, (width - tensor.shape[1], 0))
    return F.pad(tensor, (0, 0, width - tensor.shape[2], 0))


def kv_bytes_per_token(model) -> int:
    """Bytes of keys and values one token adds to the cache, from the model's config."""
    config = model.config
    config = getattr(config, "text_config", None) or config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    return 2 * config.num_hidden_layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


@dataclass
class _Submitted:
    loaded: LoadedModel
    sequence: Sequence


@dataclass
class _Counters:
    steps: int = 0
    tokens: int = 0
    prefills: int = 0
    prefix_tokens_reused: int = 0  # prompt tokens whose cache came from a remembered prefix
    waited_for_memory: int = 0  # admissions postponed because the cache would not fit


class BatchEngine:
    """The scheduler of one worker process. `cache_budget()` says how many bytes the KV cache may take now."""

    def __init__(self, *, max_batch_size: int, max_batch_tokens: int, cache_budget: Callable[[], int],
                 on_out_of_memory: Callable[[], None] = lambda: None):
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.cache_budget = cache_budget
        self.on_out_of_memory = on_out_of_memory
        self._wakeup = threading.Condition()
        self._submitted: list[_Submitted] = []
        self._waiting: deque[_Submitted] = deque()
        self._batches: dict[int, RunningBatch] = {}  # by id() of the LoadedModel
        self._thread: threading.Thread | None = None
        self.counters = _Counters()

    # -- any thread --------------------------------------------------------------

    def submit(self, loaded: LoadedModel, sequence: Sequence) -> Sequence:
        if sequence.constraint is not None and not self._compile(loaded, sequence):
            return sequence
        with self._wakeup:
            self._submitted.append(_Submitted(loaded, sequence))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="aihub-batching", daemon=True)
                self._thread.start()
            self._wakeup.notify()
        return sequence

    @staticmethod
    def _compile(loaded: LoadedModel, sequence: Sequence) -> bool:
        """Give a constrained request its grammar matcher, here in the caller's thread: compiling a new schema
        (milliseconds) or a model's token table (about half a second, once) never stalls the running batch."""
        try:
            sequence.matcher = matcher_for(tokenizer=loaded.tokenizer, vocab_size=vocab_size(loaded),
                                           eos_ids=eos_ids(loaded), constraint=sequence.constraint)
        except ConstraintError as exc:
            sequence.fail(error_object(f"response_format cannot be enforced: {exc}", type="invalid_request_error",
                                       param="response_format", code="invalid_response_format"))
            return False
        return True

    def cancel(self, sequence: Sequence) -> None:
        """From any thread: the request leaves before the engine's next step, freeing its row."""
        sequence.cancel()
        with self._wakeup:
            self._wakeup.notify()

    def reserved_bytes(self) -> int:
        """The cache the running rows may still grow to: what a model load must leave free."""
        return sum(batch.worst_case_bytes() for batch in list(self._batches.values()))

    def stats(self) -> dict:
        batches = list(self._batches.values())
        with self._wakeup:
            waiting = len(self._waiting) + len(self._submitted)
        return {
            "running": sum(len(b.rows) for b in batches),
            "waiting": waiting,
            "running_by_model": {b.loaded.model_id: len(b.rows) for b in batches if b.rows},
            "cache_bytes": sum(b.cache_bytes() for b in batches),
            "cache_reserved_bytes": self.reserved_bytes(),
            "cache_budget_bytes": max(0, self.cache_budget()),
            "max_batch_size": self.max_batch_size,
            "max_batch_tokens": self.max_batch_tokens,
            "steps": self.counters.steps,
            "tokens": self.counters.tokens,
            "prefills": self.counters.prefills,
            "prefix_tokens_reused": self.counters.prefix_tokens_reused,
            "waited_for_memory": self.counters.waited_for_memory,
        }

    # -- the engine thread --------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                self._iterate()
            except Exception:  # noqa: BLE001 - a bug here must not leave every request waiting forever
                logger.exception("the batching engine failed; ending every request it held")
                self._fail_everything(error_object("The model failed while generating; see the worker log.",
                                                   type="server_error", code="generation_failed"))

    def _fail_everything(self, error: dict) -> None:
        with self._wakeup:
            items, self._submitted = list(self._submitted) + list(self._waiting), []
            self._waiting.clear()
        for item in items:
            item.sequence.fail(error)
        for batch in self._batches.values():
            for sequence in batch.rows:
                sequence.fail(error)
            batch.clear()
        self._batches.clear()

    def _iterate(self) -> None:
        """One turn of the loop: take in, admit, step every batch."""
        with self._wakeup:
            while not (self._submitted or self._waiting or self._batches):
                self._wakeup.wait()
            submitted, self._submitted = self._submitted, []
            if not submitted and not self._batches:
                # Only requests that wait for memory: nothing changes until a submit or a cancel.
                self._wakeup.wait(timeout=0.05)
        for item in submitted:
            self._prepare(item)
        self._drop_stopped()
        self._admit()
        for key, batch in list(self._batches.items()):
            self._step(batch)
            if not batch.rows:
                del self._batches[key]  # drops the model reference, so an unload frees its memory

    def _prepare(self, item: _Submitted) -> None:
        sequence, loaded = item.sequence, item.loaded
        what = "messages" if sequence.prompt is None else "prompt"
        try:
            sequence.prompt_ids = prompt_token_ids(loaded, sequence)
        except PromptError as exc:
            sequence.fail(error_object(str(exc), type="invalid_request_error", param="prompt", code="invalid_prompt"))
            return
        except Exception as exc:  # noqa: BLE001 - a template that cannot render these messages
            sequence.fail(error_object(f"The model's chat template cannot render these messages: {exc}",
                                       type="invalid_request_error", param="messages", code="invalid_messages"))
            return
        prompt_tokens = len(sequence.prompt_ids)
        if prompt_tokens + sequence.max_tokens > loaded.context_length:
            sequence.fail(error_object(
                f"This model's maximum context length is {loaded.context_length} tokens; the {what} take "
                f"{prompt_tokens} and max_tokens asks for {sequence.max_tokens}. Shorten the {what} or "
                "max_tokens.", type="invalid_request_error", param=what, code="context_length_exceeded"))
            return
        if sequence.logit_bias:
            vocabulary = vocab_size(loaded)
            outside = sorted(token for token in sequence.logit_bias if not 0 <= token < vocabulary)
            if outside:
                sequence.fail(error_object(
                    f"logit_bias names token id {outside[0]}, but the model '{loaded.model_id}' has token ids 0 to "
                    f"{vocabulary - 1}.", type="invalid_request_error", param="logit_bias", code="invalid_logit_bias"))
                return
            sequence.bias_tokens = torch.tensor(list(sequence.logit_bias), device=loaded.device)
            sequence.bias_values = torch.tensor(list(sequence.logit_bias.values()), device=loaded.device)
        if sequence.logprobs:
            sequence.token_text = token_text(loaded)
        tokenizer = loaded.tokenizer
        sequence.text_stream = TextStream(lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                                          sequence.stop, sequence.emit)
        sequence.eos_ids = eos_ids(loaded)
        sequence.generator = seeded_generator(sequence.seed, loaded.device, sequence.index)
        self._waiting.append(item)

    def _drop_stopped(self) -> None:
        """Cancelled or expired requests leave before the next step, whether waiting or running."""
        now = time.monotonic()
        for item in list(self._waiting):
            if self._ended(item.sequence, now):
                self._waiting.remove(item)
        for batch in self._batches.values():
            for sequence in batch.rows:
                self._ended(sequence, now)
            batch.retire()

    @staticmethod
    def _ended(sequence: Sequence, now: float) -> bool:
        if sequence.cancelled:
            sequence.finish("cancelled")
        elif sequence.deadline is not None and now >= sequence.deadline:
            sequence.fail(error_object(
                "The request ran longer than the hub allows (AIHUB_GENERATION_TIME_LIMIT_SECONDS).",
                type="server_error", code="time_limit_exceeded"))
        return sequence.finished

    def _admit(self) -> None:
        """First come, first served: stop at the first request that does not fit, so none is overtaken forever."""
        groups: dict[int, list[Sequence]] = {}
        rows = sum(len(b.rows) for b in self._batches.values())
        prefill_tokens = 0
        while self._waiting and rows < self.max_batch_size:
            item = self._waiting[0]
            key = id(item.loaded)
            batch = self._batches.get(key) or RunningBatch(item.loaded)
            group = groups.get(key, [])
            width = max([len(s.prompt_ids) for s in group] + [len(item.sequence.prompt_ids)])
            if groups and prefill_tokens and width * (len(group) + 1) > self.max_batch_tokens - prefill_tokens:
                break  # the step's prompt allowance is spent; the rest join at the next boundary
            needed = batch.worst_case_bytes(group + [item.sequence])
            others = sum(b.worst_case_bytes(groups.get(k, [])) for k, b in self._batches.items() if k != key)
            budget = self.cache_budget()
            if others + needed > budget:
                if not self._batches and not groups:
                    # Nothing else holds memory: it will never fit.
                    self._waiting.popleft()
                    item.sequence.fail(error_object(
                        f"This request's KV cache needs about {needed / 2**20:.0f} MiB at most; the memory budget "
                        f"leaves {max(0, budget) / 2**20:.0f} MiB beside the loaded models. Ask for fewer tokens.",
                        type="server_error", param="max_tokens", code="insufficient_memory"))
                    continue
                self.counters.waited_for_memory += 1
                break
            self._waiting.popleft()
            self._batches.setdefault(key, batch)
            groups.setdefault(key, []).append(item.sequence)
            prefill_tokens = sum(max(len(s.prompt_ids) for s in g) * len(g) for g in groups.values())
            rows += 1
        for key, group in groups.items():
            batch = self._batches[key]
            reused = self._guarded(batch, group, functools.partial(batch.prefill, group), whole_batch=False)
            self.counters.prefills += 1
            self.counters.prefix_tokens_reused += (reused or 0) * len(group)
            batch.retire()  # rows whose first token already ended them (max_tokens 1, eos, a stop string)

    def _step(self, batch: RunningBatch) -> None:
        if batch.rows:
            self._guarded(batch, batch.rows, batch.decode)
            self.counters.steps += 1
            self.counters.tokens += len(batch.rows)
        batch.retire()

    def _guarded(self, batch: RunningBatch, rows: list[Sequence], step: Callable, *, whole_batch: bool = True):
        """A step that raises ends the rows it touched: a failed decode the whole batch (its cache is in doubt),
        a failed prefill only the prompts it was adding (the running rows are left as they were)."""
        try:
            return step()
        except Exception as exc:  # noqa: BLE001 - the engine thread must outlive any one batch
            if is_out_of_memory(exc):
                logger.error("out of device memory in a step of %d row(s) of %s", len(rows), batch.loaded.model_id)
                error = error_object("The device ran out of memory during generation; retry with fewer tokens.",
                                     type="server_error", code="insufficient_memory")
            else:
                logger.exception("a step of %s failed", batch.loaded.model_id)
                error = error_object("The model failed while generating; see the worker log.",
                                     type="server_error", code="generation_failed")
            for sequence in rows:
                sequence.fail(error)
            if whole_batch:
                batch.clear()
            if is_out_of_memory(exc):
                self.on_out_of_memory()


class PromptError(ValueError):
    """A raw prompt the model cannot take (a token id outside its vocabulary, nothing to continue)."""


def prompt_token_ids(loaded: LoadedModel, sequence: Sequence) -> list[int]:
    """The prompt's tokens: the chat template over the messages (and tools: workers/tool_prompt.py), or a raw
    prompt as it is.

    A raw text is tokenized as the model's tokenizer does by default (its BOS token included, if it adds one),
    as vLLM's /completions does; raw token ids go in unchanged, once checked against the vocabulary (an id
    beyond the embedding table would fail the whole batch's step, not just this row).
    """
    tokenizer = loaded.tokenizer
    if sequence.vision is not None:
        return sequence.vision.ids
    if sequence.prompt is None:
        return prompt_ids(tokenizer, sequence.messages, tools=sequence.tools, tool_choice=sequence.tool_choice,
                          parallel=sequence.parallel_tool_calls)
    if isinstance(sequence.prompt, str):
        ids = tokenizer(sequence.prompt)["input_ids"]
    else:
        vocabulary = loaded.model.get_input_embeddings().num_embeddings
        bad = next((token for token in sequence.prompt if not 0 <= token < vocabulary), None)
        if bad is not None:
            raise PromptError(f"The prompt holds the token id {bad}; this model's ids go from 0 to {vocabulary - 1}.")
        ids = list(sequence.prompt)
    if not ids:
        raise PromptError("The prompt is empty: give at least one token to continue.")
    return ids


def eos_ids(loaded: LoadedModel) -> set[int]:
    eos = loaded.model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if loaded.tokenizer.eos_token_id is not None:
        ids.add(loaded.tokenizer.eos_token_id)
    return ids


def vocab_size(loaded: LoadedModel) -> int:
    """The width of the model's logits: its output layer's, which may be wider than the tokenizer's vocabulary."""
    head = loaded.model.get_output_embeddings()
    config = loaded.model.config
    return getattr(head, "out_features", None) or (getattr(config, "text_config", None) or config).vocab_size


def is_out_of_memory(exc: Exception) -> bool:
    message = str(exc).lower()
    return (isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in message
            or "can't allocate memory" in message)  # the CPU allocator's wording
