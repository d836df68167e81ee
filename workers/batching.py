"""Continuous batching: one loop per worker process runs every generation of that process (docs/models.md).

Celery's task threads each hand one request (a `Sequence`, workers/sequence.py) to the engine and wait on its
outbox; one engine thread owns the forward passes. Between two steps (token boundaries) it
- prepares newly submitted requests (chat template, or a raw prompt's plain tokens; context check) in
  arrival order,
- drops the ones cancelled while they waited or ran,
- admits waiting requests, first come first served, while the batch has rows free (`AIHUB_MAX_BATCH_SIZE`)
  and the batch's KV cache at its worst case (every row running to its max_tokens) fits the memory the
  models leave in the budget; a request that does not fit waits for rows to finish, it does not fail,
- runs one step per loaded model (workers/running_batch.py): ONE forward pass that decodes a token for
  every running row and prefills the admitted prompts beside them, up to `AIHUB_MAX_BATCH_TOKENS` prompt
  tokens a step (a longer prompt takes several steps), each row with its own logits steps and sampling
  settings (workers/sampling.py: logit_bias, penalties, a grammar mask, logprobs, the choice), and
- retires the rows that finished (eos, max_tokens, a stop string, a cancel, the time limit), so their slot
  and cache are free for the next step.

Each loaded model has its own running batch; the loop steps them in turn, so requests for two models
interleave. Fine-tuned adapters of one base share the base's batch: peft applies each token's adapter
(`adapter_names`), and a base row runs without any.

The engine does no I/O: text goes to each request's outbox, and its task thread writes events, checks for
cancels and stores the answer (workers/generation.py).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from apps.core.errors import error_object

from . import compute_threads
from .constraints import ConstraintError, matcher_for
from .engine import LoadedModel
from .logprobs import token_text
from .running_batch import RunningBatch
from .sampling import seeded_generator
from .sequence import Sequence
from .text_stream import TextStream
from .tool_prompt import prompt_ids

logger = logging.getLogger(__name__)


@dataclass
class _Submitted:
    loaded: LoadedModel
    sequence: Sequence


@dataclass
class _Counters:
    steps: int = 0  # forward passes
    tokens: int = 0  # tokens decoded by running rows (a prompt's first token is counted with its prefill)
    prefills: int = 0  # prompts whose prefill ended
    prefill_tokens: int = 0  # prompt tokens computed
    mixed_steps: int = 0  # steps that decoded running rows and prefilled prompt tokens in the same pass
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
            "running": sum(len(b.admitted) for b in batches),
            "waiting": waiting,
            "running_by_model": {b.loaded.model_id: len(b.admitted) for b in batches if b.admitted},
            "cache_bytes": sum(b.cache_bytes() for b in batches),
            "cache_reserved_bytes": self.reserved_bytes(),
            "cache_budget_bytes": max(0, self.cache_budget()),
            "max_batch_size": self.max_batch_size,
            "max_batch_tokens": self.max_batch_tokens,
            "steps": self.counters.steps,
            "tokens": self.counters.tokens,
            "prefills": self.counters.prefills,
            "prefill_tokens": self.counters.prefill_tokens,
            "mixed_steps": self.counters.mixed_steps,
            "prefix_tokens_reused": self.counters.prefix_tokens_reused,
            "waited_for_memory": self.counters.waited_for_memory,
        }

    # -- the engine thread --------------------------------------------------------

    def _run(self) -> None:
        compute_threads.for_engine()  # the worker's one OpenMP team (workers/compute_threads.py)
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
            for sequence in batch.admitted:
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
            if not batch.admitted:
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
            for sequence in batch.admitted:
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
        """First come, first served: stop at the first request that does not fit, so none is overtaken forever.

        An admitted request holds a row from now on; its prompt is computed in the next steps, beside the
        running rows (RunningBatch.step), so admitting costs no forward pass of its own."""
        rows = sum(len(b.admitted) for b in self._batches.values())
        while self._waiting and rows < self.max_batch_size:
            item = self._waiting[0]
            key = id(item.loaded)
            batch = self._batches.get(key) or RunningBatch(item.loaded)
            needed = batch.worst_case_bytes([item.sequence])
            others = sum(b.worst_case_bytes() for k, b in self._batches.items() if k != key)
            budget = self.cache_budget()
            if others + needed > budget:
                if not any(b.admitted for b in self._batches.values()):
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
            self.counters.prefix_tokens_reused += batch.admit(item.sequence)
            rows += 1

    def _step(self, batch: RunningBatch) -> None:
        """One forward pass of the batch. One that raises ends what it touched: a failed pass with prompt
        chunks in it the requests of those prompts (the running rows are left as they were), any other the
        whole batch (its cache is in doubt)."""
        try:
            counts = batch.step(self.max_batch_tokens)
        except Exception as exc:  # noqa: BLE001 - the engine thread must outlive any one batch
            ended = batch.abandon_step()
            if is_out_of_memory(exc):
                logger.error("out of device memory in a step of %d request(s) of %s", len(ended),
                             batch.loaded.model_id)
                error = error_object("The device ran out of memory during generation; retry with fewer tokens.",
                                     type="server_error", code="insufficient_memory")
            else:
                logger.exception("a step of %s failed", batch.loaded.model_id)
                error = error_object("The model failed while generating; see the worker log.",
                                     type="server_error", code="generation_failed")
            for sequence in ended:
                sequence.fail(error)
            if is_out_of_memory(exc):
                self.on_out_of_memory()
        else:
            if counts.rows or counts.prompt_tokens:
                self.counters.steps += 1
                self.counters.mixed_steps += bool(counts.rows and counts.prompt_tokens)
            self.counters.tokens += counts.rows
            self.counters.prefill_tokens += counts.prompt_tokens
            self.counters.prefills += counts.prompts_done
        # Rows whose token ended them (eos, max_tokens, a stop string; a prompt's first token too) leave now.
        batch.retire()


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
