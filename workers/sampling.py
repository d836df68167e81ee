"""Each row's logits steps and its choice of the next token, with that row's own settings.

The steps of one decoding step, in this order (`choose_tokens`, the one place that runs them):

1. `logit_bias`, then `presence_penalty` and `frequency_penalty` (OpenAI's formula over the tokens the row
   generated so far), on the rows that ask, vectorised over them;
2. the grammar mask of a constrained row (`response_format`, workers/constraints.py);
3. logprobs of the rows that ask (workers/logprobs.py), of the logits as 1 and 2 left them;
4. the choice: greedy (argmax, all rows at once) or sampled with the row's temperature, top_p and its own
   random generator (`seed`).

A row that asks for none of 1-3 costs nothing beyond the argmax: each step selects only the rows that ask.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from .constraints import allowed_tokens
from .logprobs import StepLogprobs


def seeded_generator(seed: int | None, device: torch.device, choice: int = 0) -> torch.Generator | None:
    """A request's own random stream: the same seed gives the same answer whatever else is in the batch.

    Choice 0 of a request (`n` > 1) draws from `seed` itself, so n=1 answers stay as they were; the other
    choices from seeds derived from (seed, choice), so they differ from each other and stay reproducible.
    """
    if seed is None:
        return None
    if choice:
        seed = int.from_bytes(hashlib.sha256(f"{seed}:{choice}".encode()).digest()[:8], "big") >> 1
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def choose_tokens(logits: torch.Tensor, rows: list) -> tuple[list[int], list[dict | None]]:
    """`logits` [rows, vocab] of the last position (changed in place). Returns each row's next token and its
    logprob entry (None for rows that did not ask). Rows are `workers.sequence.Sequence`s."""
    with torch.inference_mode():  # the logits are the forward pass's inference tensors: changed in place
        apply_logit_bias(logits, rows)
        apply_penalties(logits, rows)
        apply_grammar_masks(logits, rows)
        logprobs = StepLogprobs(logits, rows)
        tokens = next_tokens(logits, rows)
        return tokens, logprobs.entries(tokens)


def apply_grammar_masks(logits: torch.Tensor, rows: list) -> None:
    """Forbid, in place, the tokens each constrained row's grammar does not allow next (-inf logits).

    Unconstrained rows cost nothing: no mask is built for them. The grammar library fills a bitmask on the
    CPU (one bit per token); on the CPU numpy unpacks it, on a GPU only its int32 words cross to the device
    and are unpacked there (the GPU path is untested so far: docs/models.md).
    """
    constrained = [(index, row.matcher) for index, row in enumerate(rows)
                   if row.matcher is not None and not row.finished]
    if not constrained:
        return
    vocab = logits.shape[1]
    words = allowed_tokens([matcher for _, matcher in constrained], vocab)
    with torch.inference_mode():  # the logits are inference tensors
        if logits.device.type == "cpu":
            allowed = torch.from_numpy(np.unpackbits(words.view(np.uint8), axis=1, count=vocab, bitorder="little"))
        else:
            bits = torch.arange(32, dtype=torch.int32, device=logits.device)
            allowed = ((torch.from_numpy(words).to(logits.device).unsqueeze(-1) >> bits) & 1).flatten(1)[:, :vocab]
        index = torch.tensor([index for index, _ in constrained], device=logits.device)
        masked = logits.index_select(0, index).masked_fill_(allowed == 0, float("-inf"))
        logits.index_copy_(0, index, masked)


def apply_logit_bias(logits: torch.Tensor, rows: list) -> None:
    """Add each asking row's bias to its tokens' logits (+100 all but forces a token, -100 all but bans it)."""
    biased = [(i, row) for i, row in enumerate(rows) if row.bias_tokens is not None]
    if not biased:
        return
    row_index = torch.cat([torch.full_like(row.bias_tokens, i) for i, row in biased])
    token_index = torch.cat([row.bias_tokens for _, row in biased])
    values = torch.cat([row.bias_values for _, row in biased]).to(logits.dtype)
    logits.index_put_((row_index, token_index), values, accumulate=True)


def apply_penalties(logits: torch.Tensor, rows: list) -> None:
    """OpenAI's formula: logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty, where
    count[j] is how often the row generated token j so far (the prompt does not count)."""
    index = [i for i, row in enumerate(rows) if row.presence_penalty or row.frequency_penalty]
    if not index:
        return
    counts = torch.stack([_token_counts(rows[i], logits) for i in index])
    frequency = counts.new_tensor([rows[i].frequency_penalty for i in index]).unsqueeze(1)
    presence = counts.new_tensor([rows[i].presence_penalty for i in index]).unsqueeze(1)
    penalty = counts * frequency + (counts > 0) * presence
    logits.index_add_(0, torch.tensor(index, device=logits.device), -penalty.to(logits.dtype))


def _token_counts(row, logits: torch.Tensor) -> torch.Tensor:
    """The row's generated-token counts on the device, brought up to date with the tokens since the last step."""
    if row.token_counts is None:
        row.token_counts = torch.zeros(logits.shape[-1], device=logits.device, dtype=torch.float32)
    new = row.generated[row.counted:]
    if new:
        ids = torch.tensor(new, device=logits.device)
        row.token_counts.index_add_(0, ids, torch.ones(len(new), device=logits.device))
        row.counted = len(row.generated)
    return row.token_counts


def next_tokens(logits: torch.Tensor, rows: list) -> list[int]:
    """`logits` [rows, vocab] of the last position; each row object has `.temperature`, `.top_p`, `.generator`.

    Greedy rows take the argmax all at once; sampling rows are drawn one by one, so each uses its own generator.
    """
    chosen = logits.argmax(dim=-1)
    for index, row in enumerate(rows):
        if row.temperature > 0:
            chosen[index] = _sample(logits[index], row.temperature, row.top_p, row.generator)
    return chosen.tolist()


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator) -> int:
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        # Nucleus: keep the most likely tokens whose mass reaches top_p (always at least the first).
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p
        sorted_probs[outside] = 0
        return int(order[torch.multinomial(sorted_probs, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))
