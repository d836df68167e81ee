"""Choosing each row's next token with that row's own settings (temperature, top_p, seed)."""
from __future__ import annotations

import torch


def seeded_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A request's own random stream: the same seed gives the same answer whatever else is in the batch."""
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


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
