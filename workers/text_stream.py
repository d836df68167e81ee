"""Incremental detokenisation with stop strings, shared by streamed and non-streamed output.

Decoding token by token breaks multi-byte characters and merges (BPE spaces),
so the whole completion is decoded each step and only the new, settled part
is emitted. Text that could be the start of a stop string is held back until
it is known not to be one, so a client never sees part of a stop string.
"""
from __future__ import annotations

from collections.abc import Callable


class TextStream:
    def __init__(self, decode: Callable[[list[int]], str], stop: list[str], emit: Callable[[str], None]):
        # NUL cannot be stored in a PostgreSQL text column; a model that emits it gets U+FFFD instead.
        self.decode = lambda ids: decode(ids).replace("\x00", "\ufffd")
        self.stop = [s for s in stop if s]
        self.emit = emit
        self.token_ids: list[int] = []
        self.sent = ""  # text already emitted
        self.stopped = False  # a stop string was found

    def add(self, token_ids: list[int]) -> None:
        if self.stopped:
            return
        self.token_ids.extend(token_ids)
        text = self.decode(self.token_ids)
        if text.endswith("\ufffd"):
            return  # an incomplete UTF-8 sequence: wait for the next token
        cut = self._stop_index(text)
        if cut is not None:
            self.stopped = True
            self._emit_up_to(text, cut)
            return
        self._emit_up_to(text, len(text) - self._holdback(text))

    def finish(self) -> str:
        """Flush what was held back; return the whole completion."""
        if not self.stopped:
            text = self.decode(self.token_ids)
            self._emit_up_to(text, len(text))
        return self.sent

    def _stop_index(self, text: str) -> int | None:
        # Only the unsent tail (plus the longest stop's reach into sent text) can hold a new match.
        start = max(0, len(self.sent) - max((len(s) for s in self.stop), default=0))
        found = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def _holdback(self, text: str) -> int:
        longest = 0
        for stop in self.stop:
            for length in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:length]):
                    longest = length
                    break
        return longest

    def _emit_up_to(self, text: str, end: int) -> None:
        # Decoding can re-shape earlier text only in rare tokenizer corner cases;
        # what was sent stays sent, so compare by length.
        if end > len(self.sent):
            chunk = text[len(self.sent):end]
            self.sent += chunk
            self.emit(chunk)
