"""Log probabilities of the chosen tokens and their alternatives (`logprobs`, `top_logprobs`), OpenAI's shape.

Which distribution: the log-softmax of the logits *after* logit_bias, the presence and frequency penalties
and a constrained row's grammar mask, and before temperature and top_p (vLLM's `processed_logits` mode; its
default is the raw model output). So the numbers describe what the token was chosen from: a greedy choice is
always the first of its top_logprobs, a banned or masked token never shows up as likely, and the answer does
not change with the temperature a client samples at. docs/api.md says so for clients.

Only rows that ask pay: their logits are selected, one log_softmax and one topk run over them all, and two
small transfers bring the numbers back per step.
"""
from __future__ import annotations

import functools
import re

import torch

# OpenAI's floor for a token the model all but rules out; also keeps -inf (a masked token) out of JSON.
FLOOR = -9999.0
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")  # sentencepiece's byte-fallback tokens


@functools.cache
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-ins for the 256 bytes (byte-level BPE vocabularies spell tokens with them)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    stand_ins, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            stand_ins[chr(byte)] = byte
        else:
            stand_ins[chr(256 + extra)] = byte
            extra += 1
    return stand_ins


class TokenText:
    """Each token id's text and exact bytes for one tokenizer, cached (a token is looked up once per model)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self.byte_level = type(decoder).__name__ == "ByteLevel"
        self.special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def entry(self, token_id: int, logprob: float) -> dict:
        text, raw = self._lookup(token_id)
        return {"token": text, "logprob": max(logprob, FLOOR), "bytes": raw}

    def _lookup(self, token_id: int) -> tuple[str, list[int]]:
        found = self._cache.get(token_id)
        if found is None:
            raw = self._bytes(token_id)
            # A token may hold part of a multi-byte character: its text shows the bytes, as OpenAI's does. A NUL
            # is shown the same way: the answer is stored, and PostgreSQL cannot store that character (the
            # completion's text has U+FFFD there, workers/text_stream.py); `bytes` keeps the real byte.
            text = raw.decode("utf-8", errors="backslashreplace").replace("\x00", "\\x00")
            found = self._cache[token_id] = (text, list(raw))
        return found

    def _bytes(self, token_id: int) -> bytes:
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if piece is None:  # an id past the tokenizer (a padded embedding): no text at all
            return b""
        if token_id in self.special:
            return piece.encode()
        if self.byte_level:
            alphabet = _byte_level_alphabet()
            if all(char in alphabet for char in piece):
                return bytes(alphabet[char] for char in piece)
        match = _BYTE_TOKEN.match(piece)
        if match:
            return bytes([int(match.group(1), 16)])
        return self.tokenizer.decode([token_id]).encode()


def token_text(loaded) -> TokenText:
    """The loaded model's TokenText, made on first use (only requests asking for logprobs need it)."""
    if loaded.token_text is None:
        loaded.token_text = TokenText(loaded.tokenizer)
    return loaded.token_text


class StepLogprobs:
    """The log-probabilities of one step, for the rows that asked; `entries(tokens)` once the tokens are chosen."""

    def __init__(self, logits: torch.Tensor, rows: list):
        self.rows = rows
        self.index = [i for i, row in enumerate(rows) if row.logprobs]
        self.scores = self.top = None
        if self.index:
            selected = torch.tensor(self.index, device=logits.device)
            self.scores = torch.log_softmax(logits.index_select(0, selected).float(), dim=-1)
            most = max(rows[i].top_logprobs for i in self.index)
            if most:
                self.top = self.scores.topk(most, dim=-1)

    def entries(self, tokens: list[int]) -> list[dict | None]:
        """Per row: its chosen token's entry with its top_logprobs, or None for a row that did not ask."""
        out: list[dict | None] = [None] * len(self.rows)
        if not self.index:
            return out
        chosen_ids = torch.tensor([tokens[i] for i in self.index], device=self.scores.device).unsqueeze(1)
        chosen = self.scores.gather(1, chosen_ids).squeeze(1).tolist()
        top_values = self.top.values.tolist() if self.top is not None else None
        top_ids = self.top.indices.tolist() if self.top is not None else None
        for position, i in enumerate(self.index):
            row = self.rows[i]
            entry = row.token_text.entry(tokens[i], chosen[position])
            count = row.top_logprobs
            entry["top_logprobs"] = [row.token_text.entry(token, value) for token, value in
                                     zip(top_ids[position][:count], top_values[position][:count])] if count else []
            out[i] = entry
        return out
