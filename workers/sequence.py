"""A request's choice inside the batching engine (`Sequence`) and what its outbox carries (workers/batching.py).

A task thread builds one Sequence per choice and reads its outbox; the engine thread fills in its prompt,
feeds it the tokens it draws (`accept`) and ends it (`finish`, `fail`). `cancel()` and the outbox are the only
ways between the two threads.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

import torch

from apps.core.errors import error_object

from .constraints import Matcher
from .text_stream import TextStream

logger = logging.getLogger(__name__)

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
        # Added to the row's decode positions: nonzero only after a prompt whose image tokens take fewer rotary
        # positions than tokens (M-RoPE, Qwen2-VL: workers/vision.py rope_positions). Set by the engine.
        self.position_offset = 0
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
