"""Constrained decoding: a request's `constraint` as a grammar, and one grammar matcher per constrained row.

A constraint travels in `GenerationRequest.params["constraint"]`: None, `{"type": "json_object"}` or
`{"type": "json_schema", "schema": {...}}`. The web builds it from `response_format`; forced tool calls use
the same key with the tool's JSON schema. llguidance (docs/models.md says why this library) compiles it into
a grammar over the model's tokens; at every step the engine asks each constrained row's matcher which tokens
may come next (a bitmask, one bit per token), masks that row's logits with it before sampling, and feeds the
chosen token back (`Matcher.accept`). A row ends when its grammar is complete.

The web process imports this module to refuse a schema before anything is stored, and it never imports torch
(docs/api.md): so nothing here does. Masks are numpy int32 bitmasks; the engine moves them to the logits'
device (workers/batching.py).
"""
from __future__ import annotations

import json
import threading
import weakref
from collections import OrderedDict

import llguidance
import llguidance.numpy
import numpy as np

JSON_OBJECT = {"type": "object"}  # `json_object`: any one JSON object
# Compact JSON, no whitespace between tokens: with flexible whitespace a model (a random one, a small one)
# can write blank lines inside a valid document until max_tokens, and the answer never ends by the grammar.
COMPILE_OPTIONS = {"whitespace_flexible": False}
# Compiled grammars kept per loaded model (least recently used out first); a copy of one costs microseconds.
MAX_GRAMMARS_PER_MODEL = 128


class ConstraintError(ValueError):
    """The constraint cannot be enforced: an invalid schema, or a keyword the grammar compiler does not implement."""


def constraint_grammar(constraint: dict) -> str:
    """The llguidance grammar of a constraint, checked without a tokenizer; raises ConstraintError."""
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(_schema(constraint), defaults=COMPILE_OPTIONS)
    except ValueError as exc:  # not a JSON object
        raise ConstraintError(str(exc)) from None
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise ConstraintError(_first_line(error))
    return grammar


def _schema(constraint: dict) -> dict:
    kind = constraint.get("type")
    if kind == "json_object":
        return JSON_OBJECT
    if kind == "json_schema" and isinstance(constraint.get("schema"), dict):
        return constraint["schema"]
    raise ConstraintError(f"unknown constraint {constraint!r}; expected json_object or json_schema with a schema.")


def _first_line(message: str) -> str:
    # llguidance appends its parser state and the grammar to some errors: the first line says what is wrong.
    return message.strip().splitlines()[0].removeprefix("Parser Error: ")


class Matcher:
    """One constrained row's place in its grammar. Used by the engine thread only."""

    def __init__(self, matcher: llguidance.LLMatcher):
        self._matcher = matcher

    def accept(self, token: int) -> bool:
        """Advance by the token the row drew; False if the grammar forbids it (the mask makes that a bug)."""
        return self._matcher.consume_token(token)

    @property
    def complete(self) -> bool:
        """Nothing more can follow: the answer ends here."""
        return self._matcher.is_stopped()

    @property
    def failed(self) -> bool:
        return self._matcher.is_error()

    @property
    def error(self) -> str:
        return _first_line(self._matcher.get_error())


class _ModelGrammars:
    """The grammars compiled for one tokenizer, by schema; building the token table takes about half a second."""

    def __init__(self, tokenizer, vocab_size: int, eos_ids: set[int]):
        import llguidance.hf  # imports transformers: worker side only

        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=sorted(eos_ids))
        self.compiled: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self.lock = threading.Lock()


_models: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> _ModelGrammars, dies with the model
_models_lock = threading.Lock()


def matcher_for(*, tokenizer, vocab_size: int, eos_ids: set[int], constraint: dict) -> Matcher:
    """A fresh matcher for one row; raises ConstraintError.

    Called from the task thread before the request reaches the engine, so a compile (and a model's first
    token table) never stalls the batch's steps. A schema seen before on this model is a copy of the matcher
    compiled then, in its start state.
    """
    key = json.dumps(constraint, sort_keys=True)
    with _models_lock:
        grammars = _models.get(tokenizer)
        if grammars is None:
            try:
                grammars = _models[tokenizer] = _ModelGrammars(tokenizer, vocab_size, eos_ids)
            except ValueError as exc:  # a slow (Python) tokenizer
                raise ConstraintError(f"this model's tokenizer cannot be constrained: {exc}") from None
    with grammars.lock:
        pristine = grammars.compiled.get(key)
        if pristine is not None:
            grammars.compiled.move_to_end(key)
            return Matcher(pristine.deep_copy())
    pristine = llguidance.LLMatcher(grammars.tokenizer, constraint_grammar(constraint))
    if pristine.is_error():
        raise ConstraintError(_first_line(pristine.get_error()))
    with grammars.lock:
        grammars.compiled[key] = pristine
        while len(grammars.compiled) > MAX_GRAMMARS_PER_MODEL:
            grammars.compiled.popitem(last=False)
    return Matcher(pristine.deep_copy())


_executor: llguidance.LLExecutor | None = None


def allowed_tokens(matchers: list[Matcher], vocab_size: int) -> np.ndarray:
    """The bitmask [len(matchers), ceil(vocab / 32)] int32 of the tokens each matcher allows next
    (bit t % 32 of word t // 32); several rows are filled in parallel by llguidance's threads."""
    global _executor
    bitmask = np.full(llguidance.numpy.get_bitmask_shape(len(matchers), vocab_size), -1, dtype=np.int32)
    if len(matchers) == 1:
        llguidance.numpy.fill_next_token_bitmask(matchers[0]._matcher, bitmask, 0)
    else:
        _executor = _executor or llguidance.LLExecutor()
        llguidance.numpy.fill_next_token_bitmask_par(
            _executor, [(matcher._matcher, index) for index, matcher in enumerate(matchers)], bitmask)
    return bitmask
